"""Atomic outputs: a step writes into a staging location and publishes only when it has finished.

A failed or killed task then leaves nothing that a retry or a downstream task could mistake for a
complete artifact (DESIGN §6).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from model.atomic import current_umask, staged_file

__all__ = ["staged_dir", "staged_file"]


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success its files replace those in `path`.

    If `path` does not exist the staging folder is renamed to it in one step. If it exists (a re-run),
    each staged file is renamed over its counterpart, so readers never see a half-written file, and
    files of the old output that the new one does not have are left alone.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        if not target.exists():
            os.replace(staging, target)
            return
        for src in sorted(staging.rglob("*")):
            rel = src.relative_to(staging)
            dst = target / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
