"""Write files and directories atomically: build them under a temporary name, then rename them into place.

Temporary names carry the writer's pid, so the next writer can tell a dead run's leftovers from a
live one's and remove them. SIGTERM is turned into an exit while a temporary exists, so it is
cleaned up as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, what: str = "output", directory: bool = False) -> Path:
    """Raise InputError unless `path` can be written (before any work, not after it): its nearest existing
    ancestor is a writable directory, and `path` itself, if it exists, is a writable file (or directory)."""
    from disca.errors import InputError

    path = Path(path)
    if path.exists():
        if path.is_dir() != directory:
            kind = "a directory" if path.is_dir() else "a file"
            raise InputError(f"cannot write the {what} {path}: it is {kind}")
        if not os.access(path, os.W_OK):
            raise InputError(f"cannot write the {what} {path}: permission denied")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write the {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} {path}: {parent} is not writable")
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def sigterm_as_exit():
    """While inside, SIGTERM raises SystemExit(143), so `finally` blocks remove temporaries as on Ctrl-C.

    Only the main thread can set signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale(path: Path) -> list[Path]:
    """Remove temporaries next to `path` left by dead writers; restore `path` if a kill came between the two
    renames of a directory swap. -> what was removed."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.*"):
        pid = p.name[len(path.name) + 2 :].split(".")[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if p.name.endswith(".old") and not path.exists():  # the old version, never replaced: put it back
            os.replace(p, path)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return ok


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, log=lambda msg: None):
    """Yield a temporary directory next to `path`; on success it replaces `path`.

    On any error (and on SIGTERM) the temporary directory is removed and `path` is left as it was.
    An existing `path` is swapped with the new one in one atomic rename where the system allows it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in remove_stale(path):
        log(f"removed {p}, left by a killed run")
    with sigterm_as_exit():
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the result should not be
            fsync_dir(tmp)
            if path.exists() and _exchange(tmp, path):
                pass  # tmp now holds the old version: removed below
            elif path.exists():
                old = path.with_name(f"{_prefix(path)}old")
                os.replace(path, old)
                os.replace(tmp, path)  # a kill between the two: the next writer puts `old` back
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success it is fsync'd and replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_together(directory: str | os.PathLike, writers: dict) -> None:
    """Write a report's files (`writers`: {name: callable(path)}) into `directory` as one set: all are rendered in a
    temporary directory first, then renamed into place, so an error or a kill while rendering leaves the previous
    set whole rather than new files next to old ones. Other files in `directory` are not touched."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        tmp = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=directory))
        try:
            for name, write in writers.items():
                write(tmp / name)
            for name in writers:
                os.chmod(tmp / name, 0o666 & ~current_umask())
                os.replace(tmp / name, directory / name)
            fsync_dir(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
