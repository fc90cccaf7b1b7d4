"""Image file names as a run stores them: UTF-8 text, reversible to the name on disk.

On Linux a file name is any bytes; Python reads the bytes that are not UTF-8 as lone surrogates
(``os.fsdecode``, error handler ``surrogateescape``), which neither Parquet, JSON nor a UTF-8 file can
hold. A run therefore stores every image path (the manifest's ``file``, coco.json's ``file_name``, the
name of its label map) in this form (docs/artifacts.md, "File names"):

- a byte that is not part of valid UTF-8 is written ``\\xNN`` (two lower-case hex digits);
- a backslash is written ``\\\\`` (so that a real ``\\x41`` in a name cannot be read as a byte);
- everything else is the name as it is.

A name that is UTF-8 and holds no backslash (nearly every name) is stored unchanged. :func:`real_name`
is the exact inverse, :func:`image_path` joins it to an image root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def stored_name(name: str) -> str:
    """The stored form of a path string as Python has it from the file system (``str`` with
    surrogate-escaped bytes): UTF-8-safe and reversible (:func:`real_name`)."""
    if "\\" not in name and name.isascii():
        return name
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # an undecodable byte, as surrogateescape holds it
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def real_name(stored: str) -> str:
    """The inverse of :func:`stored_name`: the path string to open (with surrogate-escaped bytes)."""
    if "\\" not in stored:
        return stored
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) is None else chr(0xDC00 + int(m.group(1), 16)), stored)


def recorded_path(stored: str) -> Path:
    """A path a run recorded (``run.json``'s ``input.root``, ``input.path``) as the path to open."""
    return Path(real_name(stored))


def image_path(root: str | os.PathLike, stored: str) -> Path:
    """Where the image a manifest row names (``file``, stored form) is under the image ``root``."""
    return Path(root) / real_name(stored)
