"""``yolo-seg``: an Ultralytics YOLO segmentation dataset.

::

    yolo-seg/
      data.yaml                  names (index: name), train: images/train, val: images/val
      images/{train,val}/<stem><ext>
      labels/{train,val}/<stem>.txt   one line per mask: class x1 y1 x2 y2 ... (normalised to [0, 1])

Each mask of masks.parquet (after --classes/--min-score) is one line: its class index and one polygon
(:mod:`ovlabel.export.polygons`: holes bridged, parts joined as Ultralytics joins them), x divided by the
image width and y by its height, six decimals. An image with no mask gets an empty file (a background
image). ``data.yaml`` has no ``path`` key, so Ultralytics resolves ``images/...`` against the yaml's own
folder and the export can be moved.
"""

from __future__ import annotations

import json

from ovlabel.export.base import FormatWriter, require
from ovlabel.export.core import SPLITS, ExportItem
from ovlabel.io.atomic import write_text


class YoloSegWriter(FormatWriter):
    name = "yolo-seg"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        require("supervision", self.name, "supervision")
        require("cv2", self.name, "opencv-python-headless")
        self.dropped = 0  # masks too small for a polygon (one or two pixels)

    def _label(self, item: ExportItem):
        return self.root / "labels" / item.split / f"{item.stem}.txt"

    def _image(self, item: ExportItem):
        return self.root / "images" / item.split / item.image_name

    def outputs(self, item):
        return [self._label(item)] + ([self._image(item)] if self.cfg.images != "none" else [])

    def write(self, item):
        self.put_image(item, self._image(item))
        write_text(self._label(item), "".join(label_lines(item, self)))

    def finish(self):
        counts = {s: sum(it.split == s for it in self.run.items) for s in SPLITS}
        val = "images/val" if counts["val"] else "images/train"
        text = (
            "# Ultralytics YOLO segmentation dataset written by `ovlabel export --format yolo-seg`.\n"
            "# No `path` key: Ultralytics resolves train/val against this file's folder.\n"
            f"# {counts['train']} train and {counts['val']} val images"
            + ("" if counts["val"] else " (no val image: val points at train)") + ".\n"
            "train: images/train\n"
            f"val: {val}\n"
            f"nc: {len(self.class_names)}\n"
            "names:\n" + "".join(f"  {i}: {json.dumps(n, ensure_ascii=False)}\n" for i, n in enumerate(self.class_names))
        )
        write_text(self.root / "data.yaml", text)


def label_lines(item: ExportItem, writer: YoloSegWriter | None = None) -> list[str]:
    """YOLO-seg label lines of ``item``'s exported masks, in masks.parquet order."""
    from ovlabel.export.core import dense_masks
    from ovlabel.export.polygons import mask_to_polygon

    ms, _ = item.masks()
    out = []
    for cls, mask in zip(ms.class_index, dense_masks(ms)):
        poly = mask_to_polygon(mask)
        if poly is None:
            if writer is not None:
                writer.dropped += 1
            continue
        xy = poly / [item.width, item.height]
        out.append(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in xy.ravel()) + "\n")
    return out
