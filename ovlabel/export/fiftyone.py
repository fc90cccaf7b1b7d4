"""``fiftyone``: a folder FiftyOne's own importers read as is, semantic and instance labels together.

::

    fiftyone/
      data/<stem><ext>         the images (--images copy/link); with --images none, data.json instead:
                               {"<stem><ext>": "/absolute/path/of/the/original"}, FiftyOne's data manifest
      labels/<stem>.png        semantic mask: exported class index + 1, 0 = unlabeled
      labels.json              COCO instances: RLE masks of masks.parquet, ``score`` (FiftyOne's COCO
                               importer reads it as the detection's ``confidence``)
      mask_targets.json        {"1": first class, ...}: the semantic masks' values

FiftyOne's ``ImageSegmentationDirectory`` type pairs ``data/<name>.<ext>`` with ``labels/<name>.png`` and
its ``COCODetectionDataset`` type reads ``data/`` + ``labels.json``; both take ``data.json`` in place of
``data/`` (``fiftyone/utils/data/importers.py``, ``ImportPathsMixin._load_data_map``). Mask values are
shifted by one because the FiftyOne App reserves 0 for background and does not draw it; 0 here is
"unlabeled" (ovlabel's 255), and the shift matches the COCO category ids (class index + 1) of
labels.json. docs/export.md has the import commands.
"""

from __future__ import annotations

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX, write_label_png
from ovlabel.dataset import coco_annotation, write_coco
from ovlabel.export.base import FormatWriter
from ovlabel.export.core import ExportItem
from ovlabel.io.atomic import atomic_path, write_json


def fiftyone_mask(label_map: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` FiftyOne mask of an exported label map: class index + 1, 0 where unlabeled (255)."""
    return np.where(label_map == IGNORE_INDEX, 0, label_map.astype(np.uint16) + 1).astype(np.uint8)


class FiftyOneWriter(FormatWriter):
    name = "fiftyone"

    def _paths(self, item: ExportItem):
        return self.root / "labels" / f"{item.stem}.png", self.root / "data" / item.image_name

    def outputs(self, item):
        mask, img = self._paths(item)
        return [mask] + ([img] if self.cfg.images != "none" else [])

    def write(self, item):
        mask, img = self._paths(item)
        self.put_image(item, img)
        write_label_png(mask, fiftyone_mask(item.label_map()))

    def finish(self):
        write_json(self.root / "mask_targets.json", {str(i + 1): n for i, n in enumerate(self.class_names)})
        if self.cfg.images == "none":
            write_json(self.root / "data.json", {it.image_name: str(it.src.resolve()) for it in self.run.items})
        images = ({"id": it.image_id, "file_name": it.image_name, "width": it.width, "height": it.height}
                  for it in self.run.items)

        def annotations():
            for item in self.run.stream():
                ms, ids = item.masks()
                for i in range(len(ms)):
                    yield coco_annotation(int(ids[i]), item.image_id, ms, i)
                item.release()

        with atomic_path(self.root / "labels.json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            write_coco(fh, {"description": "ovlabel export --format fiftyone"}, images, annotations(), self.class_names)
