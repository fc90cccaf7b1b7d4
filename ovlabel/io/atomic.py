"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A reader (or a run interrupted at any moment) therefore sees either the old complete file or the new
complete file, never a partial one. ``os.replace`` is atomic on POSIX and Windows within one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
