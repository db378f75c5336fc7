"""Atomic files: write a temporary sibling, rename it over the target only when the writing succeeded.

A killed or failed job then leaves either the old file or the new one, never a torn one that a resumed
job or a downstream task could take for whole (docs/ARCHITECTURE.md §6). Lives in model/ because the container ships
model/ alone; the pipeline steps reuse it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_file(path: str | os.PathLike[str], mode: str = "wb", **kwargs) -> Iterator:
    """Open a temporary sibling of `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; published files get the usual mode
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
