"""Pictures for the report: overlay thumbnails embedded as data URIs, and links to full-size overlays.

A thumbnail is the run's overlay (:func:`ovlabel.overlays.render_overlay`: the source image with class
colours and a legend) rendered in memory from the source image and the label map; when the source image
cannot be read (moved, deleted) the label map alone is shown in class colours. Nothing is written into the
run.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX, RunLayout, read_label_png
from ovlabel.io.names import image_path
from ovlabel.overlays import class_color, render_overlay


def _source_image(image_root: Path | None, row: dict) -> np.ndarray | None:
    from ovlabel.errors import ImageDecodeError
    from ovlabel.io.images import decode_image, read_file

    if image_root is None:
        return None
    try:
        data, sha = read_file(image_path(image_root, row["file"]))
    except ImageDecodeError:
        return None
    if sha != row["sha256"]:  # another picture under the same name now: the labels are not about it
        return None
    try:
        return decode_image(data, max_pixels=None)  # a labelled image: its run let it through
    except ImageDecodeError:
        return None


def overlay_picture(layout: RunLayout, image_root: Path | None, row: dict, classes: list[str]):
    """The PIL overlay of one ok manifest row, and whether it shows the source image (else colours only)."""
    from PIL import Image

    label_map = read_label_png(layout.root / row["label_file"])
    image = _source_image(image_root, row)
    if image is None or image.shape[:2] != label_map.shape:
        lut = np.zeros((256, 3), np.uint8)
        lut[IGNORE_INDEX] = (235, 235, 235)
        for c in np.unique(label_map):
            if c != IGNORE_INDEX:
                lut[c] = class_color(int(c))
        return Image.fromarray(lut[label_map]), False
    return render_overlay(image, label_map, classes), True


def data_uri(picture, max_side: int, quality: int = 80) -> str:
    """A JPEG data URI of the PIL image ``picture`` scaled so its longer side is at most ``max_side``."""
    from PIL import Image

    pic = picture.copy()
    pic.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    pic.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_link(layout: RunLayout, row: dict, page: Path) -> str | None:
    """Relative URL from the report file ``page`` to the run's full-size overlay of ``row``, if it exists."""
    path = layout.overlays / Path(row["label_file"]).relative_to("labels").with_suffix(".jpg")
    if not path.is_file():
        return None
    rel = os.path.relpath(path, page.parent)
    return Path(rel).as_posix()
