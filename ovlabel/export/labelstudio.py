"""``labelstudio``: Label Studio tasks with pre-annotations (predictions) to review, least certain first.

::

    labelstudio/
      tasks.json              every task, least certain image first (import this file)
      tasks/<stem>.json       the same tasks, one per file
      label_config.xml        the labeling config the tasks are written for (<Image name="image">,
                              <BrushLabels name="label"> with one <Label> per class, in ovlabel's colours)
      images/<stem><ext>      the images (--images copy/link)

Each task has ``data.image`` (``--url-prefix`` + the image's path relative to this folder, or with
``--images none`` the original's absolute path without its leading ``/``: the default prefix
``/data/local-files/?d=`` serves files relative to ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) and one
prediction whose results are brush masks, one per class present in the exported label map, in Label
Studio's own RLE (not COCO's): ``label_studio_converter.brush.mask2rle`` from the ``label-studio-converter``
package encodes them (its ``decode_rle`` reads them back). A region's ``score`` is the area-weighted mean
score of the image's kept masks of its class; the prediction's ``score`` is that over all its kept masks
(0 when it has none) and orders ``tasks.json``, lowest first (ovlabel's choice of certainty measure).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from ovlabel import __version__
from ovlabel.artifacts import IGNORE_INDEX
from ovlabel.export.base import FormatWriter, require
from ovlabel.export.core import ExportItem
from ovlabel.io.atomic import atomic_path, write_json, write_text

FROM_NAME, TO_NAME = "label", "image"


class LabelStudioWriter(FormatWriter):
    name = "labelstudio"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.brush = brush_module()
        self.model_version = f"ovlabel {__version__} {self.run.doc.get('settings_key', '')}".strip()

    def _paths(self, item: ExportItem):
        return self.root / "tasks" / f"{item.stem}.json", self.root / "images" / item.image_name

    def outputs(self, item):
        task, img = self._paths(item)
        return [task] + ([img] if self.cfg.images != "none" else [])

    def image_url(self, item: ExportItem) -> str:
        rel = f"images/{item.image_name}" if self.cfg.images != "none" else str(item.src.resolve()).lstrip("/")
        return self.cfg.url_prefix + quote(rel, safe="/")

    def task(self, item: ExportItem) -> dict:
        """The Label Studio task of ``item`` (data + one prediction of brush masks)."""
        lab = item.label_map()
        ms, _ = item.masks()
        w = ms.areas.astype(np.float64)
        results = []
        for c in np.unique(lab[lab != IGNORE_INDEX]):
            of_c = ms.class_index == c
            region = {
                "id": f"c{int(c)}", "type": "brushlabels", "from_name": FROM_NAME, "to_name": TO_NAME,
                "original_width": item.width, "original_height": item.height, "image_rotation": 0,
                "value": {"format": "rle", "rle": self.brush.mask2rle((lab == c).astype(np.uint8) * 255),
                          "brushlabels": [self.class_names[int(c)]]},
            }
            if of_c.any() and w[of_c].sum() > 0:
                region["score"] = round(float(np.average(ms.scores[of_c], weights=w[of_c])), 6)
            results.append(region)
        score = round(float(np.average(ms.scores, weights=w)), 6) if len(ms) and w.sum() > 0 else 0.0
        return {"data": {TO_NAME: self.image_url(item), "file": item.file, "image_id": item.image_id},
                "predictions": [{"model_version": self.model_version, "score": score, "result": results}]}

    def write(self, item):
        task, img = self._paths(item)
        self.put_image(item, img)
        write_json(task, self.task(item), indent=None)

    def finish(self):
        order = []
        for it in self.run.items:
            doc = json.loads(self._paths(it)[0].read_text(encoding="utf-8"))
            order.append((doc["predictions"][0]["score"], it.image_id, self._paths(it)[0]))
        order.sort(key=lambda t: (t[0], t[1]))
        with atomic_path(self.root / "tasks.json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[\n")
            for k, (_, _, path) in enumerate(order):
                fh.write(("" if k == 0 else ",\n") + path.read_text(encoding="utf-8").rstrip("\n"))
            fh.write("\n]\n")
        write_text(self.root / "label_config.xml", label_config(self.class_names))


def brush_module():
    """``label_studio_converter.brush`` (Label Studio's brush RLE: ``mask2rle``, ``decode_rle``), loaded from
    the installed ``label-studio-converter`` package without running the package's ``__init__``, which
    imports every converter (pandas, nltk: ~4 s) although the brush module needs only numpy and PIL."""
    import importlib.util
    import sys

    name = "ovlabel.export._ls_brush"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("label_studio_converter")  # locates the package, does not import it
    if spec is None or not spec.submodule_search_locations:
        return require("label_studio_converter.brush", "labelstudio", "label-studio-converter")
    path = Path(list(spec.submodule_search_locations)[0]) / "brush.py"
    brush_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(brush_spec)
    brush_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def label_config(class_names: list[str]) -> str:
    """A Label Studio labeling config for the tasks: an image and one brush label per class (colour: the
    class's colour in ovlabel's overlays)."""
    from ovlabel.overlays import class_color

    labels = "".join(
        f'    <Label value={quoteattr(n)} background="#{"".join(f"{v:02x}" for v in class_color(i))}"/>\n'
        for i, n in enumerate(class_names)
    )
    return (f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </BrushLabels>\n</View>\n')
