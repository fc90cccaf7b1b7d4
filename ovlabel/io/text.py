"""User text files (vocabularies, templates, image lists, captions, params and config files), read one way.

People save these with Windows Notepad (a UTF-8 byte-order mark; UTF-16 as "Unicode"), with CRLF line
ends, or in a legacy 8-bit encoding. :func:`read_user_text` returns the text with the mark removed and
every line end as ``\\n``; a file that is not UTF-8 gets an :class:`~ovlabel.errors.OvlabelError` naming
the file and the encoding problem (the line and byte of the first bad byte, or "UTF-16") and how to re-save
it. ovlabel never guesses an encoding: Latin-1 and Windows-1252 read any byte, so a guess would turn a
wrong encoding into wrong class names silently, and a binary file can start with a UTF-16 mark.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from ovlabel.errors import OvlabelError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """The text of the user file ``path``, described in messages as ``what`` (e.g. ``"vocabulary file"``,
    ``"--params"``).

    - a UTF-8 byte-order mark is dropped (never part of the first class name or path);
    - CRLF and lone CR line ends become ``\\n``;
    - anything else must be UTF-8: otherwise OvlabelError naming the file and the offending byte, its line
      and offset (or, for a file with a UTF-16 byte-order mark, saying so). A file that cannot be read
      (missing, a folder, no permission) is an OvlabelError too.
    """
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except IsADirectoryError:
        raise OvlabelError(f"{what} '{path}' is a folder, not a text file") from None
    except OSError as exc:
        raise OvlabelError(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from None
    return decode_user_text(raw, what, path)


def decode_user_text(raw: bytes, what: str, path) -> str:
    """:func:`read_user_text` on bytes already read (``path`` only names the file in messages)."""
    if raw.startswith(_UTF16_BOMS):
        raise OvlabelError(f"{what} '{path}' is not UTF-8 text: it starts with a UTF-16 byte-order mark (Notepad's "
                           f"\"Unicode\"); re-save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 IN > OUT)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OvlabelError(_not_utf8(raw, exc, what, path)) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, what: str, path) -> str:
    start = exc.start
    line = raw[:start].count(b"\n") + 1
    column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
    bad = raw[start : start + 1].hex()
    return (f"{what} '{path}' line {line}: not UTF-8 text (byte 0x{bad} at column {column}, byte offset {start}: "
            f"{exc.reason}); it looks like a legacy encoding such as Latin-1 or Windows-1252: re-save the file as "
            f"UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)")
