"""One writer per folder: an advisory lock on a file inside the folder (shard OUT, run directory).

`fcntl.flock` is released by the kernel when its holder exits in any way, kill -9 included, so a lock
left by a killed process is simply taken by the next one; the file itself only names the holder.
Torch-free, so the command line can take it before anything heavy is imported.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError

LOCK_FILE = ".dfp.lock"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_HELD: set[int] = set()  # this process's lock descriptors


def _forget_in_child() -> None:
    """A forked child (a packing or loader worker) must not keep its parent's lock alive: were the parent
    killed, the lock would stay held until the orphaned workers finished."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FolderLock:
    """Held from `acquire` to `release`; a second writer's `acquire` raises InputError naming the holder.
    `create`: a missing folder is made, and removed again by `release(failed=True)` while still empty, so a
    command that fails leaves no trace."""

    def __init__(self, folder: str | os.PathLike, label: str = "folder", create: bool = False):
        self.folder, self.label = Path(folder), label
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.created: list[Path] = []
        if create:
            self.created = [d for d in (self.folder, *self.folder.parents) if not d.exists()]
            self.folder.mkdir(parents=True, exist_ok=True)

    def acquire(self) -> "FolderLock":
        try:
            return self._acquire()
        except BaseException:
            self._remove_created()
            raise

    def _acquire(self) -> "FolderLock":
        if not os.access(self.folder, os.W_OK):  # a read-only folder is refused before anything is written
            raise InputError(f"{self.label} {self.folder}: cannot write there (read-only or not yours); "
                             "make it writable or choose another folder")
        for _ in range(5):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise InputError(f"{self.label} {self.folder} is in use by {holder}: one writer per folder; "
                                 "wait for it to finish, or choose another folder") from None
            if self._still_ours(fd):
                break
            os.close(fd)  # its last holder removed the file between our open and our lock: take the new one
        else:
            raise InputError(f"{self.label} {self.folder}: its lock file keeps changing; is another dfp starting?")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    def release(self, failed: bool = False) -> None:
        if self.fd not in _HELD:  # never taken, released already, or inherited from a parent
            return
        if self._still_ours(self.fd):
            try:
                self.path.unlink(missing_ok=True)  # while still locked, so nobody holds a removed file
            except OSError:
                pass  # the folder turned read-only: the file stays, unlocked, and the next writer takes it
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None
        if failed:
            self._remove_created()

    def _remove_created(self) -> None:
        for d in self.created:  # deepest first; a folder something was written into stays
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise InputError(f"{self.label} {self.folder}: cannot write there ({e.strerror}); "
                                 "make it writable or choose another folder") from None
            raise

    def _still_ours(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False


@contextmanager
def held(folder: str | os.PathLike, label: str = "folder", create: bool = False) -> Iterator[FolderLock]:
    lock = FolderLock(folder, label, create).acquire()
    try:
        yield lock
    except BaseException:
        lock.release(failed=True)
        raise
    lock.release()


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it has locked the file but not yet written its name
