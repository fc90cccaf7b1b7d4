"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A reader (or a run interrupted at any moment) therefore sees either the old complete file or the new
complete file, never a partial one. ``os.replace`` is atomic on POSIX and Windows within one filesystem.
A process killed between writing and renaming leaves its ``.<name>.<random>.tmp`` file behind; the next
writer of that run directory removes it (:func:`ovlabel.io.lock.remove_stale_temps`).

Testing hook (used by the crash-safety tests, inert otherwise): if the environment variable
``OVLABEL_TEST_KILL_AT`` is set to ``PHASE:PATTERN[#N]``, the process SIGKILLs itself at the N-th (default
first) atomic write whose destination file name matches the glob ``PATTERN``, just ``before`` or ``after``
(``PHASE``) its rename; e.g. ``after:coco.json`` or ``before:*.png#2``. See :func:`crash_point`, and
:func:`worker_crash_point` for worker processes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it onto ``dest``.

    The caller writes the file at the yielded path by any means (PIL, pyarrow, ...). On an exception the
    temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the mode a plain open() would
                os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
        _rename_into_place(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _rename_into_place(tmp: Path, dest: Path) -> None:
    crash_point("before", dest.name)
    os.replace(tmp, dest)
    crash_point("after", dest.name)


_kill_hits = 0


def crash_point(phase: str, name: str) -> None:
    """Testing hook: SIGKILL this process here if ``OVLABEL_TEST_KILL_AT`` (``PHASE:PATTERN[#N]``) names
    this point for the N-th time. One environment lookup when the variable is unset."""
    global _kill_hits
    spec = os.environ.get("OVLABEL_TEST_KILL_AT")
    if not spec:
        return
    where, _, nth = spec.partition("#")
    want_phase, _, pattern = where.partition(":")
    if want_phase == phase and fnmatch.fnmatchcase(name, pattern):
        _kill_hits += 1
        if _kill_hits == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def worker_crash_point() -> None:
    """Testing hook: with ``OVLABEL_TEST_KILL_WORKER=DIR``, a worker process about to label a batch SIGKILLs
    itself if it can claim the file ``DIR/armed`` (renamed first, so one arming kills one worker once)."""
    folder = os.environ.get("OVLABEL_TEST_KILL_WORKER")
    if not folder:
        return
    try:
        os.rename(Path(folder) / "armed", Path(folder) / f"fired-{os.getpid()}")
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``dest``."""
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON (keys in insertion order, UTF-8, trailing newline)."""
    write_text(dest, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def atomic_symlink(dest: str | os.PathLike, target: str | os.PathLike) -> None:
    """Atomically make ``dest`` a symbolic link to ``target`` (replacing whatever ``dest`` was): the link is
    made under a temporary name in ``dest``'s folder and renamed onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.urandom(6).hex()}.tmp"
    os.symlink(os.fspath(target), tmp)
    try:
        _rename_into_place(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
