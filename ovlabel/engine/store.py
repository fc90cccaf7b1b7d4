"""The part store: each image's result per stage, one Parquet file per (stage settings, image).

``parts/<stage key>/<part id>.parquet`` holds one image's masks from one stage (:func:`ovlabel.artifacts.
write_part`). The stage key is a digest of exactly the settings that stage's masks depend on; the part id
names what the result depends on in the image: its content hash, or a digest of the content hash and the
stage's per-image inputs (the classes it looks for, a parent run's label map). A part exists only once it
is complete (atomic write), so "which parts exist" is the whole resume state.

What the rebuild derived from the parts is cached in ``cache/`` (:mod:`ovlabel.engine.cache`), keyed on
:func:`paint_id`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ovlabel.artifacts import RunLayout, part_info, read_part, write_part
from ovlabel.masks import MaskSet


def digest(*parts: str) -> str:
    """SHA-256 hex digest of the parts joined by ``:`` (part ids that depend on more than the image)."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


class PartStore:
    """The part files of one run: ``keys`` maps each stage (``"1.1"``, ``"segment"``, ...) to its settings key."""

    def __init__(self, layout: RunLayout, keys: dict[str, str]):
        self.layout, self.keys = layout, dict(keys)

    def path(self, stage: str, part_id: str) -> Path:
        return self.layout.part(self.keys[stage], part_id)

    def missing(self, ids: dict[str, str]) -> set[str]:
        """The stages whose part of an image (``ids``: stage -> part id) does not exist yet."""
        return {s for s, pid in ids.items() if not self.path(s, pid).exists()}

    def write(self, stage: str, part_id: str, masks: MaskSet, width: int, height: int) -> None:
        write_part(self.path(stage, part_id), masks, width, height)

    def read(self, ids: dict[str, str]) -> tuple[dict[str, MaskSet], int, int]:
        """``({stage: masks}, width, height)`` of an image from its parts."""
        parts, w, h = {}, 0, 0
        for s, pid in ids.items():
            parts[s], w, h = read_part(self.path(s, pid))
        return parts, w, h

    def info(self, ids: dict[str, str]) -> tuple[dict[str, int], int, int]:
        """``({stage: mask count}, width, height)`` from the part footers alone (no mask data read)."""
        counts, w, h = {}, 0, 0
        for s, pid in ids.items():
            counts[s], w, h = part_info(self.path(s, pid))
        return counts, w, h


def paint_id(key: str, ids: dict[str, str]) -> str:
    """What an image's label map and dataset rows are made from: a digest of the run's artifact settings
    key and the image's part ids (:mod:`ovlabel.engine.cache` keys its entries on it)."""
    return digest(key, *(f"{s}={ids[s]}" for s in sorted(ids)))[:24]
