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

A second hook simulates outputs that cannot be written (a full disk, a read-only file system): with
``OVLABEL_TEST_FAIL_WRITE=ERRNO:PATTERN[#N]`` (``ERRNO`` a name such as ``ENOSPC`` or ``EROFS``), the N-th
(default first) atomic write whose destination file name matches ``PATTERN`` and every matching write
after it fail with that ``OSError`` while writing, as a full disk does. See :func:`write_fault`.

Every failure to write (the temporary file, its data, the rename) is raised as
:class:`~ovlabel.errors.OutputError` naming the destination and the operating system's reason.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ovlabel.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it onto ``dest``.

    The caller writes the file at the yielded path by any means (PIL, pyarrow, ...). On an exception the
    temporary file is removed and ``dest`` is left untouched; an ``OSError`` (also one a writer library
    raised as its own error type with an errno, like pyarrow's) becomes :class:`OutputError` naming
    ``dest``. The temporary name keeps at most 100 characters of ``dest``'s name, so a destination whose
    name is near the file system's limit still gets one.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:100]}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise OutputError(dest.parent if not dest.parent.is_dir() else dest, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write_fault(dest.name)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the mode a plain open() would
                os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
        _rename_into_place(tmp_path, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        failure = _os_error(exc)
        if failure is not None and not isinstance(exc, OutputError):
            raise OutputError(dest, failure) from None
        raise


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind a failed write: ``exc`` itself or the one it was raised from, with its errno
    (pyarrow's errors carry it only in the message: ``[errno 28] ...``); None for any other error."""
    import re

    for e in (exc, exc.__cause__):
        if isinstance(e, OSError):
            if e.errno:
                return e
            m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
            if m:
                return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    return None


_fault_hits = 0


def write_fault(name: str) -> None:
    """Testing hook: raise ``OSError(ERRNO)`` if ``OVLABEL_TEST_FAIL_WRITE`` (``ERRNO:PATTERN[#N]``) names this
    write: the N-th write whose destination name matches and every matching one after it (a full disk
    stays full). One environment lookup when unset."""
    global _fault_hits
    hook = _hook("OVLABEL_TEST_FAIL_WRITE", name)
    if hook is not None:
        code, nth = hook
        _fault_hits += 1
        if _fault_hits >= nth:
            num = getattr(errno, code)
            raise OSError(num, os.strerror(num))


def _hook(variable: str, name: str) -> tuple[str, int] | None:
    """A testing hook's ``(WHAT, N)`` if the environment variable ``variable`` (``WHAT:PATTERN[#N]``) is set
    and its glob ``PATTERN`` matches the file name ``name``, else None."""
    spec = os.environ.get(variable)
    if not spec:
        return None
    where, _, nth = spec.partition("#")
    what, _, pattern = where.partition(":")
    return (what, int(nth or 1)) if fnmatch.fnmatchcase(name, pattern) else None


def _rename_into_place(tmp: Path, dest: Path) -> None:
    crash_point("before", dest.name)
    os.replace(tmp, dest)
    crash_point("after", dest.name)


_kill_hits = 0


def crash_point(phase: str, name: str) -> None:
    """Testing hook: SIGKILL this process here if ``OVLABEL_TEST_KILL_AT`` (``PHASE:PATTERN[#N]``) names
    this point for the N-th time. One environment lookup when the variable is unset."""
    global _kill_hits
    hook = _hook("OVLABEL_TEST_KILL_AT", name)
    if hook is not None and hook[0] == phase:
        _kill_hits += 1
        if _kill_hits == hook[1]:
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
    tmp = dest.parent / f".{dest.name[:100]}.{os.urandom(6).hex()}.tmp"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.fspath(target), tmp)
        _rename_into_place(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(dest, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
