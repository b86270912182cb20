"""An exclusive lock on an output folder, so that two runs never write into one folder at once."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from qubo_nn.errors import QuboNNError

LOCK_NAME = ".qubo-nn.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold ``fcntl.flock(LOCK_EX)`` on ``folder/.qubo-nn.lock`` (holding this process's pid) for the
    body; the folder must exist. A second holder is refused at once with a :class:`QuboNNError`
    naming the folder and the holder's pid. The lock file is removed on release; the lock dies
    with the process (the kernel drops it), so a killed run never blocks the next one."""
    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):   # a file system without locks (ENOLCK): run unlocked
                os.close(fd)
                try:
                    yield path
                finally:
                    with contextlib.suppress(OSError):
                        path.unlink()
                return
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise QuboNNError(f"{what} {str(folder)!r} is in use by another qubo-nn run (pid {holder}); expected "
                              f"one run per folder: wait for it to finish or choose another folder") from None
        try:   # the file may have been removed (released) between open and flock: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
