"""A run's dataset files, masks.parquet and coco.json, written in one streaming pass from per-image
fragments.

A fragment is one image's rows of masks.parquet before they get their ids (:data:`ovlabel.artifacts.
FRAGMENT_SCHEMA`: class name, RLE, box, area, scores, quality signals), plus the image's quality columns of
the manifest (:func:`mask_fragment` makes both from the image's merged masks). The writer gives the rows
their image and mask ids, writes them in row groups of :data:`ROW_GROUP_IMAGES` images, and writes the
same masks as COCO annotations. Everything in a fragment is a function of the image's parts and the run's
settings, so a rebuild can reuse the fragments of unchanged images (:mod:`ovlabel.engine.cache`) and still
write the same bytes as a rebuild from every part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ovlabel.artifacts import (
    FRAGMENT_SCHEMA,
    MASKS_SCHEMA,
    RunLayout,
    _mask_columns,
    _nullable,
    read_parquet,
)
from ovlabel.io.atomic import atomic_path
from ovlabel.masks import MaskSet

#: Images per row group of masks.parquet: few row groups (a small footer, flat memory while writing),
#: each a bounded number of masks.
ROW_GROUP_IMAGES = 256


def mask_fragment(ms: MaskSet, class_names: list[str], height: int, width: int) -> tuple[pa.Table, dict]:
    """An image's fragment (:data:`~ovlabel.artifacts.FRAGMENT_SCHEMA` rows, in mask order) and its manifest
    quality columns, from its merged masks and size (:func:`ovlabel.quality.image_quality`)."""
    from ovlabel.quality import image_quality

    q = image_quality(ms, height, width)
    cols = {"category": [class_names[c] for c in ms.class_index]} | _mask_columns(ms)
    cols.update(margin=_nullable(q.mask_margin), agreement=_nullable(q.mask_agreement),
                quality=_nullable(q.mask_quality))  # margin: as the estimate used it
    return pa.Table.from_pydict(cols, schema=FRAGMENT_SCHEMA), q.manifest_columns()


def fragment_annotations(table: pa.Table) -> list[dict]:
    """COCO annotations (:func:`coco_annotation`) of rows of masks.parquet (``mask_id`` is the annotation
    ``id``)."""
    cols = ["mask_id", "image_id", "class_index", "rle_size", "rle_counts", "area", "bbox_xyxy", "score", "source"]
    d = table.select(cols).to_pydict()
    return [_annotation(*(d[c][i] for c in cols)) for i in range(table.num_rows)]


def coco_annotation(ann_id: int, image_id: int, ms: MaskSet, i: int) -> dict:
    """COCO annotation dict of mask ``i`` of ``ms`` (as :func:`fragment_annotations` writes its rows)."""
    return _annotation(ann_id, image_id, int(ms.class_index[i]), list(map(int, ms.rles[i]["size"])),
                       ms.rles[i]["counts"], int(ms.areas[i]), [float(v) for v in ms.boxes[i]], float(ms.scores[i]),
                       ms.source[i])


def _annotation(ann_id, image_id, class_index, size, counts, area, box_xyxy, score, source) -> dict:
    """The one layout of a COCO annotation: RLE ``segmentation``, ``bbox`` as ``xywh`` (converted from the
    xyxy pixel edges, here and only here), ``category_id = class_index + 1``, ``iscrowd`` 0, ``score``
    rounded to 6 decimals, ``source``."""
    x1, y1, x2, y2 = box_xyxy
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_index + 1,
        "segmentation": {"size": size, "counts": counts},
        "area": area,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": 0,
        "score": round(score, 6),
        "source": source,
    }


class CocoWriter:
    """Streams a COCO instances file into the text file ``fh``: :meth:`begin` with ``info`` and the image
    dicts, :meth:`add` annotation dicts one at a time, :meth:`end` with the class names (``id = index +
    1``). Same inputs, same bytes."""

    def __init__(self, fh):
        self.fh, self.first = fh, True

    def begin(self, info: dict, images) -> None:
        self.fh.write("{\n" + f'"info": {_j(info)},\n"licenses": [],\n"images": [\n')
        self.fh.write(",\n".join(_j(im) for im in images))
        self.fh.write('\n],\n"annotations": [\n')

    def add(self, ann: dict) -> None:
        self.fh.write(("" if self.first else ",\n") + _j(ann))
        self.first = False

    def end(self, class_names: list[str]) -> None:
        cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(class_names)]
        self.fh.write('\n],\n"categories": ' + _j(cats) + "\n}\n")


def write_coco(fh, info: dict, images, annotations, class_names: list[str]) -> None:
    """A whole COCO instances file into ``fh`` from iterables of image and annotation dicts (:class:`CocoWriter`)."""
    w = CocoWriter(fh)
    w.begin(info, images)
    for ann in annotations:
        w.add(ann)
    w.end(class_names)


def _j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


class DatasetWriter:
    """masks.parquet and coco.json of a run, written atomically in one pass (a context manager): ``images``
    are the manifest rows of the labelled images in id order; :meth:`add` each one's fragment in that
    order. ``mask_id`` (Parquet) equals the COCO annotation ``id``."""

    def __init__(self, layout: RunLayout, images: list[dict], class_names: list[str], info: dict):
        self.layout, self.images, self.class_names, self.info = layout, images, class_names, info
        self.count, self._frags, self._ids, self._n_images = 0, [], [], 0

    def __enter__(self):
        self._pq_ctx, self._coco_ctx = atomic_path(self.layout.masks), atomic_path(self.layout.coco)
        pq_tmp, coco_tmp = self._pq_ctx.__enter__(), self._coco_ctx.__enter__()
        self._writer = pq.ParquetWriter(pq_tmp, MASKS_SCHEMA, compression="zstd")
        self._fh = open(coco_tmp, "w", encoding="utf-8")
        self._coco = CocoWriter(self._fh)
        self._coco.begin(self.info, ({"id": r["image_id"], "file_name": r["file"], "width": r["width"],
                                      "height": r["height"]} for r in self.images))
        return self

    def add(self, image_id: int, frag: pa.Table) -> None:
        if frag.num_rows:
            self._frags.append(frag)
            self._ids.append((image_id, frag.num_rows))
        self._n_images += 1
        if self._n_images % ROW_GROUP_IMAGES == 0:
            self._flush()

    def _flush(self) -> None:
        """Write the pending images as one row group: ids assigned in one vectorised step."""
        if not self._frags:
            return
        table = pa.concat_tables(self._frags)
        image_ids = np.repeat([i for i, _ in self._ids], [n for _, n in self._ids])
        mask_ids = np.arange(self.count + 1, self.count + table.num_rows + 1)
        table = table.add_column(0, "mask_id", pa.array(mask_ids, pa.int64()))
        table = table.add_column(0, "image_id", pa.array(image_ids, pa.int64())).cast(MASKS_SCHEMA)
        self._writer.write_table(table, row_group_size=1 << 30)
        for ann in fragment_annotations(table):
            self._coco.add(ann)
        self.count += table.num_rows
        self._frags, self._ids = [], []

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._flush()
                self._coco.end(self.class_names)
        finally:
            self._writer.close()
            self._fh.close()
            self._coco_ctx.__exit__(exc_type, exc, tb)
            self._pq_ctx.__exit__(exc_type, exc, tb)
        return False


@dataclass
class WrittenMasks:
    """What :func:`write_masks_and_coco` wrote: ``count`` masks, and per image id the manifest's quality
    columns (:data:`ovlabel.artifacts.MANIFEST_QUALITY_COLUMNS`) for the caller to put in the manifest rows."""

    count: int
    quality: dict[int, dict]


def write_masks_and_coco(layout: RunLayout, images: list[dict], per_image, class_names: list[str],
                         info: dict) -> WrittenMasks:
    """Write ``masks.parquet`` and ``coco.json`` from merged masks: ``images`` are the manifest rows of the
    labelled images (image_id, file, width, height) in id order, ``per_image`` an iterable of ``(image_id,
    MaskSet)`` in the same order. Memory stays flat: one image's masks at a time."""
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in images}
    quality: dict[int, dict] = {}
    with DatasetWriter(layout, images, class_names, info) as w:
        for image_id, ms in per_image:
            frag, quality[image_id] = mask_fragment(ms, class_names, *sizes[image_id])
            w.add(image_id, frag)
    return WrittenMasks(w.count, quality)


def quality_summary(layout: RunLayout) -> dict | None:
    """The label-quality summary for ``run.json`` (key ``quality``): the estimate's weights, the per-image
    distribution from the manifest and per class from masks.parquet (:func:`ovlabel.quality.class_summary`).
    None when the run's files predate the quality columns. Reads columns only (no mask data)."""
    from ovlabel.quality import WEIGHTS, class_summary

    masks = pq.ParquetFile(layout.masks)
    if "quality" not in masks.schema_arrow.names:
        return None
    t = masks.read(columns=["image_id", "category", "area", "quality"])
    m = read_parquet(layout.manifest, columns=["status", "quality"]).to_pydict()  # two columns, not every row
    q = [v for s, v in zip(m["status"], m["quality"]) if s == "ok"]
    known = np.array([v for v in q if v is not None], np.float64)
    images = {"labelled": len(q), "estimated": int(len(known))}
    if len(known):
        p10, p50, p90 = np.percentile(known, [10, 50, 90])
        images.update(mean=round(float(known.mean()), 6), p10=round(float(p10), 6), median=round(float(p50), 6),
                      p90=round(float(p90), 6))
    return {
        "definition": "ovlabel.quality (docs/quality.md): weighted mean of the available signals, 1 = looks best",
        "weights": dict(WEIGHTS),
        "images": images,
        "classes": class_summary(t.column("category").to_pylist(), t.column("area").to_pylist(),
                                 t.column("quality").to_pylist(), t.column("image_id").to_pylist()),
    }
