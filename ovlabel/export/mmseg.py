"""``mmseg``: an MMSegmentation (1.x) dataset folder and a dataset config that points at it.

::

    mmseg/
      img_dir/{train,val}/<stem><ext>
      ann_dir/{train,val}/<stem>.png     8-bit grayscale: exported class index, 255 = ignore
      ovlabel_dataset.py                 dataset config: metainfo (classes, palette), dataloaders, evaluator

The config uses ``BaseSegDataset`` with ``reduce_zero_label=False`` and ``ignore_index=255`` (class 0 is a
real class here) and ``data_root = '{{ fileDirname }}'`` (mmengine replaces it with the config's folder,
so the export can be moved). ``BaseSegDataset`` pairs an image with its map by replacing one
``img_suffix`` with ``seg_map_suffix``; a run with several image suffixes gets one dataset per suffix in a
``ConcatDataset``. Include it from a model config with ``_base_ = ['path/to/ovlabel_dataset.py', ...]``.
The palette is the one ovlabel's overlays and legend use.
"""

from __future__ import annotations

import json

from ovlabel.artifacts import write_label_png
from ovlabel.export.base import FormatWriter
from ovlabel.export.core import ExportItem
from ovlabel.io.atomic import write_text

CONFIG_NAME = "ovlabel_dataset.py"

_PIPELINES = """crop_size = (512, 512)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=False),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=False),
    dict(type="PackSegInputs"),
]
"""


class MmsegWriter(FormatWriter):
    name = "mmseg"

    def _paths(self, item: ExportItem):
        return (self.root / "ann_dir" / item.split / f"{item.stem}.png",
                self.root / "img_dir" / item.split / item.image_name)

    def outputs(self, item):
        ann, img = self._paths(item)
        return [ann] + ([img] if self.cfg.images != "none" else [])

    def write(self, item):
        ann, img = self._paths(item)
        self.put_image(item, img)
        write_label_png(ann, item.label_map())

    def finish(self):
        write_text(self.root / CONFIG_NAME, dataset_config(self.class_names, sorted({it.ext for it in self.run.items})))


def dataset_config(class_names: list[str], suffixes: list[str]) -> str:
    """The text of ``ovlabel_dataset.py`` for ``class_names`` and the image ``suffixes`` present."""
    from ovlabel.overlays import class_color

    def q(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)

    classes = ", ".join(q(n) for n in class_names) + ("," if len(class_names) == 1 else "")
    palette = ", ".join(f"[{r}, {g}, {b}]" for r, g, b in (class_color(i) for i in range(len(class_names))))

    def dataset(split: str, pipeline: str) -> str:
        parts = [
            f"dict(type=dataset_type, data_root=data_root, metainfo=metainfo, "
            f"data_prefix=dict(img_path={q('img_dir/' + split)}, seg_map_path={q('ann_dir/' + split)}), "
            f"img_suffix={q(sfx)}, seg_map_suffix='.png', reduce_zero_label=False, ignore_index=255, "
            f"pipeline={pipeline})"
            for sfx in suffixes
        ]
        if len(parts) == 1:
            return parts[0]
        return "dict(type='ConcatDataset', datasets=[\n        " + ",\n        ".join(parts) + ",\n    ])"

    return (
        "# MMSegmentation dataset config written by `ovlabel export --format mmseg`.\n"
        "# Use it as a base: _base_ = ['path/to/ovlabel_dataset.py', <model and schedule configs>]\n"
        "dataset_type = 'BaseSegDataset'\n"
        "data_root = '{{ fileDirname }}'\n"
        f"metainfo = dict(classes=({classes}), palette=[{palette}])\n"
        + _PIPELINES
        + f"train_dataset = {dataset('train', 'train_pipeline')}\n"
        f"val_dataset = {dataset('val', 'test_pipeline')}\n"
        "train_dataloader = dict(batch_size=2, num_workers=2, persistent_workers=True,\n"
        "                        sampler=dict(type='InfiniteSampler', shuffle=True), dataset=train_dataset)\n"
        "val_dataloader = dict(batch_size=1, num_workers=2, persistent_workers=True,\n"
        "                      sampler=dict(type='DefaultSampler', shuffle=False), dataset=val_dataset)\n"
        "test_dataloader = val_dataloader\n"
        "val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])\n"
        "test_evaluator = val_evaluator\n"
    )
