"""Atomic outputs: a step writes into a staging location and publishes only when it has finished.

A failed or killed task then leaves nothing that a retry or a downstream task could mistake for a
complete artifact (docs/ARCHITECTURE.md §6).

An output folder is replaced whole: a re-run must not leave files of the earlier output beside the new
ones (training loads every .rec of a channel, so one stale file is trained on). The staging folder's
name records its owner (host, pid, process start time), so the next run into the same destination can
remove what a killed run left behind without ever touching the staging of a run that is still going.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from model.atomic import current_umask, staged_file

__all__ = ["check_output_dir", "check_output_files", "owner_tag", "staged_dir", "staged_file", "staged_files"]

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".staging"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


# --- who owns a staging folder -----------------------------------------------------------------------------

def _host() -> str:
    # pids mean nothing across machines (a shared filesystem) or containers: only ours are judged
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc, or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()   # the command name may hold spaces and parentheses
    try:
        return fields[0].decode("ascii"), int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_tag(pid: int | None = None) -> str:
    """``<host>-<pid>-<start>``: names a process uniquely even after its pid is reused (start 0: unknown)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return f"{_host()}-{pid}-{stat[1] if stat else 0}"


def _owner_alive(host: str, pid: int, start: int) -> bool:
    """False only when we know the owner is gone; anything we cannot tell counts as alive."""
    if host != _host():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process: it exists
    except OSError:  # pragma: no cover - e.g. signals not supported
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):   # killed, not yet reaped by its parent
        return False
    return not (start and started != start)   # a different start time: the pid was reused


def _staging_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(?:(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-(?P<start>\d+)\.)?"
                      rf"[a-z0-9_]+{re.escape(STAGING_SUFFIX)}$")


def remove_dead_staging(target: Path) -> list[Path]:
    """Remove the ``.NAME.*.staging`` siblings of `target` whose owner is no longer alive; returns them.

    Folders without an owner in their name (made before names carried one) are reported, not removed:
    nothing says whether a run is still writing there.
    """
    pattern = _staging_pattern(target.name)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return []
    for p in siblings:
        m = pattern.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        if m["pid"] is None:
            log.warning("%s: staging folder with no owner in its name (left by an older version?); remove it by "
                        "hand if no run is writing into %s", p, target)
            continue
        if _owner_alive(m["host"], int(m["pid"]), int(m["start"])):
            continue
        log.info("%s: removing the staging folder of a run that is no longer alive (pid %s)", p, m["pid"])
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# --- checks before any work -----------------------------------------------------------------------------

def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_dir(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Refuse, before any work, a destination that cannot or must not be replaced by a folder.

    Replacing a folder deletes what it held, so a folder holding one of the step's inputs, the current
    folder (or one above it) and the home folder are refused, as are a file and a parent that is a file.
    Returns the folder that will be replaced (a symlink is followed: the folder it points to is replaced).
    """
    given = Path(path)
    target = given.resolve() if given.is_symlink() else given
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{given}: is a file, not a folder; the output folder would replace it "
                                 f"(remove it or choose another --output)")
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{given}: {parent} is not a folder, so the output cannot be written")
            break
    real = target.resolve()
    keep_out = [(Path.cwd().resolve(), "the current folder")]
    with contextlib.suppress(RuntimeError, KeyError):   # no home folder known: nothing to protect
        keep_out.append((Path.home().resolve(), "the home folder"))
    for keep, what in keep_out:
        if _is_within(keep, real):
            raise ValueError(f"{given}: is {what} or a folder above it; the output replaces its folder whole, "
                             f"so choose a folder of its own")
    for item in inputs:
        if item is None:
            continue
        inp = Path(item).resolve()
        if _is_within(inp, real):
            raise ValueError(f"{given}: holds the input {item}; the output replaces its folder whole, which would "
                             f"delete it: choose another output folder")
    return target


# --- publishing a folder ----------------------------------------------------------------------------------

def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): readers see the old folder or the new one."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace_dir(staging: Path, target: Path, tag: str) -> None:
    """Put `staging` at `target`; an existing `target` ends up in a staging-named folder that is removed."""
    try:
        os.rename(staging, target)   # no output yet (or an empty folder: rename replaces it)
        return
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    try:
        _exchange(staging, target)
        old = staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
            raise
        # Two renames: for a moment `target` is absent (never half-written). The aside folder carries our
        # owner tag, so if we die in between, the next run removes it.
        old = target.parent / f".{target.name}.{tag}.{secrets.token_hex(4)}{STAGING_SUFFIX}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success it replaces `path` whole.

    Anything the old output held that the new one does not is gone. `inputs` are the files and folders
    the step reads: a destination holding one is refused before any work (see check_output_dir). Staging
    folders of dead runs into the same destination are removed first.
    """
    target = check_output_dir(path, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(target)
    tag = owner_tag()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}.", suffix=STAGING_SUFFIX, dir=target.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
    try:
        yield staging
        _replace_dir(staging, target, tag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- publishing several files together ---------------------------------------------------------------------

def check_output_files(paths: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]] = ()
                       ) -> list[Path]:
    """Refuse, before any work, output files that cannot all be written: a folder in the way, a parent
    that is a file, two outputs that are one file, an output that is an input (it would be replaced)."""
    targets = [Path(p) for p in paths]
    resolved = [t.resolve() for t in targets]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"output files must differ: {', '.join(map(str, targets))}")
    for item in inputs:
        if Path(item).resolve() in resolved:
            raise ValueError(f"{item}: is an input and an output; writing the output would replace the input")
    for path in targets:
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; the output file cannot be written there")
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise NotADirectoryError(f"{path}: {parent} is not a folder, so the output cannot be written")
                break
    return targets


@contextlib.contextmanager
def staged_files(paths: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]] = (),
                 mode: str = "w", **kwargs) -> Iterator[list]:
    """Open temporary siblings of all `paths`; on success they replace the targets together, else none does.

    Every destination is checked before the block runs (check_output_files), so a bad second path
    never costs the work of writing the first. At the end the old files are moved aside first, so a
    failing rename puts every old file back. (A crash between the renames can still leave one new and
    one old file: two files cannot be swapped in one step.)
    """
    targets = check_output_files(paths, inputs)
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    with contextlib.ExitStack() as stack:
        try:
            files = []
            for t in targets:
                fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent)
                os.close(fd)
                temps.append(Path(tmp))
                os.chmod(tmp, 0o666 & ~current_umask())
                files.append(stack.enter_context(open(tmp, mode, **kwargs)))
            yield files
            stack.close()
            _commit_files(list(zip(temps, targets)))
        finally:
            stack.close()
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)


def _commit_files(pairs: list[tuple[Path, Path]]) -> None:
    aside: list[tuple[Path, Path]] = []   # (target, where its old file went)
    published: list[Path] = []
    try:
        for _tmp, target in pairs:
            if target.exists() or target.is_symlink():
                old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
                os.rename(target, old)
                aside.append((target, old))
        for tmp, target in pairs:
            os.rename(tmp, target)
            published.append(target)
    except BaseException:
        for target in published:
            with contextlib.suppress(OSError):
                target.unlink()
        for target, old in aside:
            with contextlib.suppress(OSError):
                os.rename(old, target)
        raise
    for _target, old in aside:
        with contextlib.suppress(OSError):
            old.unlink()
