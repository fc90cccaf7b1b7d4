"""``voc``: a Pascal VOC segmentation layout, with the file CVAT's "Segmentation mask 1.1" import reads.

::

    voc/
      JPEGImages/<stem><ext>              the images (their own format: a PNG stays a PNG)
      SegmentationClass/<stem>.png        palette PNG: pixel = exported class index, 255 = unlabeled,
                                          palette = the VOC colour map (VOCdevkit's VOClabelcolormap.m)
      Annotations/<stem>.xml              VOC object XML: per mask, per connected part, name, bndbox and a
                                          <polygon> (supervision's Pascal VOC writer; holes bridged),
                                          segmented=1
      ImageSets/Segmentation/{train,val,trainval}.txt   stems, one per line
      labelmap.txt                        CVAT/Datumaro label map: name:r,g,b:: per class, in index order

In ``labelmap.txt`` every class has its VOC palette colour, and a last line ``background:224,224,192::``
declares the colour of 255 (VOC's void colour): CVAT refuses a mask colour that no label declares (cvat
issue #7847) and does not create annotations for its ``background`` label, so unlabeled pixels stay
unlabeled there (ovlabel's choice). It is left out when a class is itself named ``background``.
"""

from __future__ import annotations

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX
from ovlabel.export.base import FormatWriter, lines, require
from ovlabel.export.core import SPLITS, ExportItem, dense_masks
from ovlabel.io.atomic import atomic_path, write_text


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: uint8 ``(n, 3)`` RGB, colour of index i from the bits of i spread over
    the three channels, most significant first (VOCdevkit ``VOClabelcolormap.m``). Index 0 is black and
    255 is (224, 224, 192), VOC's void colour."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def write_palette_png(path, label_map: np.ndarray, palette: np.ndarray) -> None:
    """Save a uint8 ``(H, W)`` label map as a mode-P PNG whose pixel values are the label map's values and
    whose palette is ``palette`` uint8 ``(256, 3)``. Atomic."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(label_map, np.uint8))
    im.putpalette(palette.astype(np.uint8).ravel().tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


class VocWriter(FormatWriter):
    name = "voc"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        require("supervision", self.name, "supervision")
        require("cv2", self.name, "opencv-python-headless")
        self.palette = voc_colormap()

    def _paths(self, item: ExportItem):
        return (self.root / "SegmentationClass" / f"{item.stem}.png", self.root / "Annotations" / f"{item.stem}.xml",
                self.root / "JPEGImages" / item.image_name)

    def outputs(self, item):
        seg, xml, img = self._paths(item)
        return [seg, xml] + ([img] if self.cfg.images != "none" else [])

    def write(self, item):
        seg, xml, img = self._paths(item)
        self.put_image(item, img)
        write_palette_png(seg, item.label_map(), self.palette)
        write_text(xml, annotation_xml(item, self.class_names))

    def finish(self):
        sets = self.root / "ImageSets" / "Segmentation"
        for split in SPLITS:
            write_text(sets / f"{split}.txt", lines(it.stem for it in self.run.items if it.split == split))
        write_text(sets / "trainval.txt", lines(it.stem for it in self.run.items))
        rows = [f"{n}:{','.join(map(str, self.palette[i]))}::" for i, n in enumerate(self.class_names)]
        if "background" not in self.class_names:
            rows.append(f"background:{','.join(map(str, self.palette[IGNORE_INDEX]))}::")
        write_text(self.root / "labelmap.txt", "# label:color_rgb:parts:actions\n" + lines(rows))


def annotation_xml(item: ExportItem, class_names: list[str]) -> str:
    """VOC annotation XML of ``item``'s exported masks, by supervision's ``detections_to_pascal_voc``
    (one object per connected part of each mask, holes bridged, no polygon simplification)."""
    import supervision as sv
    from supervision.dataset.formats.pascal_voc import detections_to_pascal_voc

    ms, _ = item.masks()
    if len(ms):
        det = sv.Detections(xyxy=ms.boxes.astype(np.float32), mask=np.stack(list(dense_masks(ms))),
                            class_id=ms.class_index.astype(int))
    else:
        det = sv.Detections.empty()
    xml = detections_to_pascal_voc(det, classes=class_names, filename=item.image_name,
                                   image_shape=(item.height, item.width, 3), approximation_percentage=0.0)
    # VOC marks images of the segmentation set with segmented=1; the source is ovlabel, not supervision's default
    return xml.replace("<segmented>0</segmented>", "<segmented>1</segmented>", 1).replace(
        "<database>roboflow.ai</database>", "<database>ovlabel</database>", 1)
