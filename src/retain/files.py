"""Writing on a user's machine without losing or exposing anything.

The two ways retain writes, each in one step (a reader sees the old version or the new one, never part):

- `write_file(path, write)`: a file, written to a temporary name beside it, flushed, renamed over it;
- `staging_folder(out)`: a temporary folder beside `out` to write a whole folder into, flushed
  (`fsync_tree`) and moved into place (`replace_folder`, or the caller's own rule) before the block
  ends; removed whatever happens.

And what they are built on:

- `check_replaceable`: retain replaces only a folder it wrote itself (one holding its marker file), an
  empty folder, or nothing; never a symbolic link, never a folder of the user's.
- `replace_folder`: move a finished folder into place; the old one is moved aside, then removed.
- `fsync_tree` / `fsync_path`: flush files and folders to disk before a rename makes them visible, so a
  power loss cannot leave a truncated file under the final name.
- `unique_suffix`: temporary names unique across processes *and* hosts (a shared volume).
- `exclusive_lock`: an `flock` on a lock file, refused at once when another process holds it.
- `restrict`: the permissions of member data (files 0640, folders 0750 by default).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from retain.errors import RetainError


class FolderInUse(RetainError):
    """Another process holds the lock of the folder being written."""

    exit_code = 3


def check_replaceable(out: Path, marker: str, what: str) -> None:
    """Refuse to replace `out` unless it is absent, an empty folder, or a `what` that retain wrote
    (a real folder holding `marker`). Raises `RetainError` with the reason."""
    if out.is_symlink():
        raise RetainError(
            f"{out} is a symbolic link; retain replaces only folders it wrote itself. "
            "Pass the real path, or a new folder."
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise RetainError(f"{out} is a file, not a folder; choose another path.")
    holds_marker = (out / marker).is_file() and not (out / marker).is_symlink()
    if holds_marker or not any(out.iterdir()):
        return
    raise RetainError(
        f"{out} exists and is not a {what} (it has no {marker}); retain replaces only folders it wrote. "
        "Choose a new folder, or move that one away yourself."
    )


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder `new` to `out`, replacing what is there (moved aside, then removed)."""
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{unique_suffix()}"
        out.rename(old)  # renames a link itself, never what it points at
        new.rename(out)
        if not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)  # rmtree never follows links inside the folder
        else:
            old.unlink()
    else:
        new.rename(out)
    fsync_path(out.parent)


def write_file(path: Path, write: Callable[[Path], object], mode: int | None = None) -> Path:
    """Write `path` in one step: `write(tmp)` fills a temporary file beside it, which gets `mode` (when
    given), is flushed to disk and renamed over `path`; then the folder is flushed. A crash leaves the old
    file whole (and at most a `.<name>.tmp-*` file beside it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{unique_suffix()}")
    try:
        write(tmp)
        if mode is not None:
            tmp.chmod(mode)
        fsync_path(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return path


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `out` (`.<name>.tmp-<unique>-*`), removed when the block ends: write
    the whole folder into it, then, inside the block, `fsync_tree` it and move it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{unique_suffix()}-", dir=out.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def unique_suffix() -> str:
    """`<host>-<pid>-<random>`: no other process, on this host or another one on a shared volume, makes it."""
    host = "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: Path) -> None:
    """Flush one file or folder to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    except OSError as exc:  # some file systems cannot fsync a folder; the files are flushed all the same
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves (deepest first)."""
    for root, _folders, names in os.walk(folder, topdown=False):
        for name in names:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def parse_mode(text: str, key: str) -> int:
    """An octal file mode such as "0640"; the owner must keep read and write."""
    try:
        mode = int(text, 8)
    except (TypeError, ValueError):
        raise RetainError(f'{key} must be an octal file mode like "0640", got {text!r}.') from None
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise RetainError(f'{key} must be an octal mode from "0600" to "0777" that lets the owner read and write.')
    return mode


def folder_mode(file_mode: int) -> int:
    """The folder mode that goes with a file mode: whoever may read may also enter (0640 -> 0750)."""
    return file_mode | ((file_mode & 0o444) >> 2)


def restrict(path: Path, file_mode: int) -> None:
    """Set `file_mode` on a file, or on every file under a folder and `folder_mode` on its folders."""
    if path.is_file():
        os.chmod(path, file_mode)
        return
    for root, _folders, names in os.walk(path):
        os.chmod(root, folder_mode(file_mode))
        for name in names:
            os.chmod(Path(root) / name, file_mode)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy_message: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing); `FolderInUse(busy_message)` if another
    process holds it. The lock goes with the process, so a crashed run never leaves it taken."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(busy_message) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running on this host (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        return True
    return True
