"""The part store: each image's result per stage, one Parquet file per (stage settings, image).

``parts/<stage key>/<part id>.parquet`` holds one image's masks from one stage (:func:`ovlabel.artifacts.
write_part`). The stage key is a digest of exactly the settings that stage's masks depend on; the part id
names what the result depends on in the image: its content hash, or a digest of the content hash and the
stage's per-image inputs (the classes it looks for, a parent run's label map). A part exists only once it
is complete (atomic write), so "which parts exist" is the whole resume state. A part file that is not a
whole Parquet file (garbage, truncated by a copy or a disk error: it does not end in Parquet's ``PAR1``
magic) is damaged: the scan names it, removes it and recomputes it like a missing one
(:meth:`PartStore.missing`, four bytes read per part). One whose footer or data is damaged behind an intact
end is found when it is read: removed, and the run stops (exit 1) so the rerun recomputes it.

What the rebuild derived from the parts is cached in ``cache/`` (:mod:`ovlabel.engine.cache`), keyed on
:func:`paint_id`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ovlabel.artifacts import RunLayout, part_info, read_part, write_part
from ovlabel.errors import RunFailed
from ovlabel.masks import MaskSet


def digest(*parts: str) -> str:
    """SHA-256 hex digest of the parts joined by ``:`` (part ids that depend on more than the image)."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


class PartStore:
    """The part files of one run: ``keys`` maps each stage (``"1.1"``, ``"segment"``, ...) to its settings key."""

    def __init__(self, layout: RunLayout, keys: dict[str, str]):
        self.layout, self.keys = layout, dict(keys)
        #: damaged part files found (and removed) by :meth:`missing`: ``(path, reason)``
        self.damaged: list[tuple[Path, str]] = []

    def path(self, stage: str, part_id: str) -> Path:
        return self.layout.part(self.keys[stage], part_id)

    def missing(self, ids: dict[str, str]) -> set[str]:
        """The stages whose part of an image (``ids``: stage -> part id) does not exist yet or is damaged
        (not a whole Parquet file: garbage, truncated). A damaged part is reported on stderr, recorded in
        :attr:`damaged` and removed, so that it is recomputed like a missing one."""
        out = set()
        for s, pid in ids.items():
            path = self.path(s, pid)
            why = _unsound(path)
            if why is not None:
                if why:
                    self._damaged(path, why)
                out.add(s)
        return out

    def _damaged(self, path: Path, reason: str | Exception) -> None:
        if isinstance(reason, Exception):
            reason = f"{type(reason).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}".rstrip(": ")
        print(f"warning: damaged part file {path} ({reason}): removed, recomputing it", file=sys.stderr)
        self.damaged.append((path, reason))
        path.unlink(missing_ok=True)

    def write(self, stage: str, part_id: str, masks: MaskSet, width: int, height: int) -> None:
        write_part(self.path(stage, part_id), masks, width, height)

    def read(self, ids: dict[str, str]) -> tuple[dict[str, MaskSet], int, int]:
        """``({stage: masks}, width, height)`` of an image from its parts. A part whose footer was sound but
        whose data cannot be read is removed and raises :class:`~ovlabel.errors.RunFailed` (exit 1): the
        next run recomputes it."""
        parts, w, h = {}, 0, 0
        for s, pid in ids.items():
            parts[s], w, h = self._read(read_part, self.path(s, pid))
        return parts, w, h

    def _read(self, reader, path: Path):
        """``reader(path)``; a part that cannot be read is removed and raises RunFailed (exit 1)."""
        try:
            return reader(path)
        except Exception as exc:
            self._damaged(path, exc)
            raise RunFailed(f"part file '{path}' is damaged ({self.damaged[-1][1]}); it was removed: run the "
                            f"same command again to recompute it") from None

    def info(self, ids: dict[str, str]) -> tuple[dict[str, int], int, int]:
        """``({stage: mask count}, width, height)`` from the part footers alone (no mask data read); a damaged
        footer is handled as in :meth:`read`."""
        counts, w, h = {}, 0, 0
        for s, pid in ids.items():
            counts[s], w, h = self._read(part_info, self.path(s, pid))
        return counts, w, h


def _unsound(path: Path) -> str | None:
    """None if ``path`` is a whole Parquet file as far as its ends show (it starts and ends with ``PAR1``);
    ``""`` if it does not exist; else why it is damaged."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            size = fh.seek(0, 2)
            if size >= 12:
                fh.seek(-4, 2)
            tail = fh.read(4)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        return f"not a whole Parquet file ({size} bytes; truncated or overwritten)"
    return None


def paint_id(key: str, ids: dict[str, str]) -> str:
    """What an image's label map and dataset rows are made from: a digest of the run's artifact settings
    key and the image's part ids (:mod:`ovlabel.engine.cache` keys its entries on it)."""
    return digest(key, *(f"{s}={ids[s]}" for s in sorted(ids)))[:24]
