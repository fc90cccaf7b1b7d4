"""What ``ovlabel report`` shows, read from a run's artifacts only (no model, no torch).

:func:`load_run` reads run.json, the manifest, masks.parquet (its columns, not the masks), the label maps
(per-class pixel counts) and the run's ``eval/*.json`` reports. Runs written before the quality
columns existed get their estimate computed here from masks.parquet (:func:`ovlabel.quality.image_quality`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX, RunLayout, open_complete_run, read_label_png, read_manifest
from ovlabel.io.names import recorded_path

#: masks.parquet columns the report reads (never the RLE); absent ones (older runs) read as null.
MASK_COLUMNS = ("image_id", "mask_id", "category", "class_index", "source", "score", "area", "margin", "quality")


@dataclass
class RunData:
    """A complete run as the report sees it.

    ``rows``: manifest rows (every status; ``quality`` filled, from the manifest or recomputed, see
    ``quality_origin``); ``masks``: per image id, its mask rows (``MASK_COLUMNS``), largest first;
    ``class_pixels``: int64 ``(len(classes) + 1,)`` labelled pixels per class, the last entry unlabeled;
    ``class_masks``: masks per class index; ``evals``: the run's ``eval/*.json`` documents, by file name.
    """

    root: Path
    doc: dict
    rows: list[dict]
    classes: list[str]
    masks: dict[int, list[dict]]
    class_pixels: np.ndarray
    class_masks: np.ndarray
    quality_origin: str
    evals: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    def image_root(self, override: str | Path | None = None) -> Path | None:
        """Where the run's source images are (``override``, else run.json's input root), or None."""
        if override:
            return Path(override).expanduser()
        root = (self.doc.get("input") or {}).get("root")
        return recorded_path(root) if root else None


def load_run(path: str | Path, workers: int | None = None) -> RunData:
    """Read a complete run (OvlabelError if ``path`` is not one). ``workers`` threads read label maps.
    The run's own stored estimate is used; :func:`apply_reference` adds a second labeller's."""
    import pyarrow.parquet as pq

    layout, doc, classes = open_complete_run(path, masks=True)
    root = layout.root
    rows = read_manifest(layout.manifest)
    pf = pq.ParquetFile(layout.masks)
    present = [c for c in MASK_COLUMNS if c in pf.schema_arrow.names]
    table = pf.read(columns=present).to_pydict()
    n = len(table["image_id"])
    masks: dict[int, list[dict]] = {}
    for i in range(n):
        m = {c: (table[c][i] if c in table else None) for c in MASK_COLUMNS}
        masks.setdefault(m["image_id"], []).append(m)
    for ms in masks.values():
        ms.sort(key=lambda m: (-m["area"], m["mask_id"]))
    class_masks = np.bincount(np.asarray(table["class_index"], np.int64), minlength=len(classes))[: len(classes)]
    origin = "manifest"
    ok = [r for r in rows if r["status"] == "ok"]
    if ok and all(r.get("quality") is None for r in ok):
        origin = "recomputed"
        _recompute_quality(layout, ok, masks)
    pixels = _class_pixels(layout, ok, len(classes), workers)
    return RunData(root, doc, rows, classes, masks, pixels, class_masks, origin, _read_evals(layout))


def apply_reference(data: RunData, reference_run: str | Path) -> int:
    """Recompute the estimate of every image that the complete run ``reference_run`` (another labeller:
    salience, ``segment`` of the same images, ...) labelled from the same input (same SHA-256), with its
    label map as the ``reference`` signal (:func:`ovlabel.quality.image_quality`). Classes are matched by
    name. Returns the number of images re-estimated."""
    ref_layout, doc, ref_classes = open_complete_run(reference_run)
    ref_root = ref_layout.root
    ours = {n: i for i, n in enumerate(data.classes)}
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for i, name in enumerate(ref_classes[:IGNORE_INDEX]):
        lut[i] = ours.get(name, IGNORE_INDEX)
    ref_rows = {r["file"]: r for r in read_manifest(ref_layout.manifest) if r["status"] == "ok"}
    refs = {}
    for r in data.ok:
        other = ref_rows.get(r["file"])
        if other is not None and other["sha256"] == r["sha256"]:
            refs[r["image_id"]] = lut[read_label_png(ref_root / other["label_file"])]
    _recompute_quality(RunLayout(data.root), [r for r in data.ok if r["image_id"] in refs], data.masks, refs)
    data.quality_origin = f"with reference {ref_root} ({len(refs)} images)"
    return len(refs)


def _recompute_quality(layout: RunLayout, ok: list[dict], masks: dict[int, list[dict]],
                       references: dict[int, np.ndarray] | None = None) -> None:
    """Fill the manifest rows' and mask rows' quality (for a run written before the quality columns, or
    with a reference label map per image id)."""
    from ovlabel.artifacts import read_masks
    from ovlabel.masks import MaskSet
    from ovlabel.quality import image_quality

    sets = read_masks(layout.masks)
    for r in ok:
        ms = sets.get(r["image_id"], MaskSet.empty())
        q = image_quality(ms, r["height"], r["width"], reference=(references or {}).get(r["image_id"]))
        r.update(q.manifest_columns())
        by_id = {m["mask_id"]: m for m in masks.get(r["image_id"], [])}
        ids = sorted(by_id)  # read_masks keeps file order = mask_id order within an image
        for mid, mq, mm in zip(ids, q.mask_quality, q.mask_margin):
            by_id[mid]["quality"] = None if mq != mq else float(mq)
            by_id[mid]["margin"] = None if mm != mm else float(mm)


def _class_pixels(layout: RunLayout, ok: list[dict], k: int, workers: int | None) -> np.ndarray:
    def count(r):
        try:
            lm = read_label_png(layout.root / r["label_file"])
        except (OSError, ValueError):
            return np.zeros(256, np.int64)
        return np.bincount(lm.ravel(), minlength=256).astype(np.int64)

    total = np.zeros(256, np.int64)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for c in pool.map(count, ok):
            total += c
    out = np.zeros(k + 1, np.int64)
    out[:k] = total[:k]
    out[k] = total[IGNORE_INDEX]
    return out


def _read_evals(layout: RunLayout) -> dict[str, dict]:
    out = {}
    if layout.evals.is_dir():
        for p in sorted(layout.evals.glob("*.json")):
            try:
                out[p.name] = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return out
