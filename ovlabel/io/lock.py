"""One writer per run directory: an advisory lock that a crashed run cannot leave stuck.

Every command that writes a run directory holds :func:`run_lock` on it from before it reads the run's
state until it has written ``run.json`` for the last time::

    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "segment"):
        ...  # read run.json, work, finalize

A second command on the same directory gets :class:`RunLocked` (an :class:`OvlabelError`, so the CLI
prints it and exits 2) naming the holder: command, pid, host and start time. The lock is the kernel's
(``flock`` on POSIX, ``msvcrt.locking`` on Windows) on ``RUN/.lock``: it is released when the holding
process ends in any way, SIGKILL and power loss included, so a crashed run never blocks the next one;
the file itself may stay behind and is then harmless. On Linux ``flock`` also works across NFS clients
(the kernel maps it to NFS byte-range locks).

Also here: :func:`remove_stale_temps`, which deletes the temporary files that :mod:`ovlabel.io.atomic`
leaves when a process is killed between writing and renaming (safe only while holding the lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ovlabel.errors import OvlabelError

LOCK_NAME = ".lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunLocked(OvlabelError):
    """Another live process holds the run directory's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"`{info['command']}`, pid {info['pid']} on {info['host']}, started {info['started']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of the existing folder ``run_dir`` for the ``with`` block; yields the lock
    file's path. Never waits: raises :class:`RunLocked` at once if another process holds it."""
    path = Path(run_dir) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except OSError:
            os.close(fd)
            raise RunLocked(
                f"'{run_dir}' is in use by another ovlabel run ({_holder(path)}); wait for it to finish or "
                f"choose another output folder (the lock is released as soon as that process ends, even if "
                f"it crashes)"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the file between our open and lock: take the new one
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiter that opened this file re-checks and retries
        with contextlib.suppress(OSError):
            _unlock(fd)
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`ovlabel.io.atomic.atomic_path` (``.<dest>.<rand>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def remove_stale_temps(root: str | os.PathLike) -> int:
    """Delete the temporary files a killed writer left under ``root``; returns how many. Call it only
    while holding :func:`run_lock` on ``root`` (no other process is writing there)."""
    n = 0
    for p in Path(root).rglob(".*.tmp"):
        if (p.is_file() or p.is_symlink()) and is_temp_name(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def ignorable(name: str) -> bool:
    """Files a crashed run can leave in a folder that does not make it "not empty": the lock file and
    atomic-write temporaries."""
    return name == LOCK_NAME or is_temp_name(name)
