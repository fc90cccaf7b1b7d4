"""``hf``: a Hugging Face ``datasets`` dataset in the Hub's Parquet layout.

::

    hf/
      README.md                                   dataset card; its ``configs`` name the splits' files
      data/train-00000-of-0000N.parquet           columns: image, annotation (Image), file, image_id
      data/validation-00000-of-0000M.parquet
      id2label.json, classes.txt, legend.png      the exported classes

``annotation`` is an 8-bit grayscale PNG (exported class index, 255 = unlabeled), the ``image`` +
``annotation`` convention of the SegFormer fine-tuning recipes, which read ``id2label.json`` beside the
data. The schema and row encoding are ``datasets``' own (``Features.arrow_schema``,
``Features.encode_example``), so ``datasets.load_dataset("path/to/hf")`` returns a ``DatasetDict`` with
``train`` and ``validation`` whose columns decode to PIL images, and ``huggingface-cli upload`` can push the
folder as is. With ``--images copy`` the image bytes are embedded; with ``link`` or ``none`` the column
holds the original file's absolute path only (loadable on this machine, not pushable).

Shards hold ``--hf-shard-images`` images each, written as 100-row row groups (``datasets``' size for image
data) into a temporary file renamed when the shard is complete: a shard is the unit an interrupted export
resumes from, and memory holds at most one row group per split.
"""

from __future__ import annotations

import json
import math

from ovlabel.export.base import FormatWriter, png_bytes, require
from ovlabel.export.core import ExportItem, read_image
from ovlabel.io.atomic import atomic_path, write_text

HF_SPLITS = {"train": "train", "val": "validation"}
ROW_GROUP = 100


class HfWriter(FormatWriter):
    name = "hf"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        datasets = require("datasets", self.name, "datasets")
        self.features = datasets.Features({
            "image": datasets.Image(), "annotation": datasets.Image(),
            "file": datasets.Value("string"), "image_id": datasets.Value("int64"),
        })
        self.schema = self.features.arrow_schema
        self.shard_of: dict[int, tuple[str, int, int]] = {}  # image_id -> (split, shard, position in shard)
        self.count = {}
        size = self.cfg.hf_shard_images
        for split in HF_SPLITS:
            ids = [it.image_id for it in self.run.items if it.split == split]
            self.count[split] = math.ceil(len(ids) / size)
            for k, iid in enumerate(ids):
                self.shard_of[iid] = (split, k // size, k % size)
        self.sizes = {(s, k): 0 for s in HF_SPLITS for k in range(self.count[s])}
        for s, k, _ in self.shard_of.values():
            self.sizes[(s, k)] += 1
        self._open: dict[str, tuple] = {}  # split -> (shard, atomic context, ParquetWriter, rows)

    def shard_path(self, split: str, k: int):
        return self.root / "data" / f"{HF_SPLITS[split]}-{k:05d}-of-{self.count[split]:05d}.parquet"

    def outputs(self, item: ExportItem):
        split, k, _ = self.shard_of[item.image_id]
        return [self.shard_path(split, k)]

    def row(self, item: ExportItem) -> dict:
        """One encoded row: ``image`` (bytes with --images copy, else the original's absolute path),
        ``annotation`` (PNG of the exported label map), ``file`` (path in the run), ``image_id``."""
        if self.cfg.images == "copy":
            image = {"bytes": read_image(item), "path": item.image_name}
        else:
            image = {"bytes": None, "path": str(item.src.resolve())}
        ann = {"bytes": png_bytes(item.label_map()), "path": None}
        return self.features.encode_example({"image": image, "annotation": ann, "file": item.file,
                                             "image_id": item.image_id})

    def write(self, item):
        import pyarrow as pa
        import pyarrow.parquet as pq

        split, k, pos = self.shard_of[item.image_id]
        cur = self._open.get(split)
        if cur is None or cur[0] != k:
            if cur is not None:  # an earlier shard of this split was skipped or is done: never half-open here
                self._close(split, commit=False)
            ctx = atomic_path(self.shard_path(split, k))
            tmp = ctx.__enter__()
            # no dictionary encoding: encoded images are all distinct, and with it the writer's peak memory
            # rose with the rows written (measured with 400 KB rows: 355 -> 399 MiB for 300 -> 1200 rows; flat without)
            writer = pq.ParquetWriter(tmp, self.schema, use_dictionary=False)
            cur = self._open[split] = (k, ctx, writer, [])
        cur[3].append(self.row(item))
        last = pos == self.sizes[(split, k)] - 1
        if len(cur[3]) == ROW_GROUP or last:
            cur[2].write_table(pa.Table.from_pylist(cur[3], schema=self.schema))
            cur[3].clear()
        if last:
            self._close(split, commit=True)

    def _close(self, split: str, commit: bool) -> None:
        k, ctx, writer, _ = self._open.pop(split)
        writer.close()
        if commit:
            ctx.__exit__(None, None, None)
        else:
            err = RuntimeError("shard abandoned")
            ctx.__exit__(RuntimeError, err, None)

    def close(self):
        for split in list(self._open):
            self._close(split, commit=False)

    def finish(self):
        splits = [s for s in HF_SPLITS if self.count[s]]
        files = "".join(f"  - split: {HF_SPLITS[s]}\n    path: data/{HF_SPLITS[s]}-*\n" for s in splits)
        id2label = {str(i): n for i, n in enumerate(self.class_names)}
        text = (
            "---\n"
            "task_categories:\n- image-segmentation\n"
            "configs:\n- config_name: default\n  data_files:\n" + files + "---\n\n"
            "# Semantic segmentation labels from ovlabel\n\n"
            "Written by `ovlabel export --format hf`: `image`, `annotation` (8-bit class-index PNG, 255 = "
            "unlabeled), `file` (path in the labelled run), `image_id`.\n\n"
            "```python\nimport datasets, json\n"
            "ds = datasets.load_dataset('path/to/this/folder')\n"
            "id2label = {int(k): v for k, v in json.load(open('path/to/this/folder/id2label.json')).items()}\n```\n\n"
            f"Classes (`id2label.json`): `{json.dumps(id2label, ensure_ascii=False)}`\n\n"
            "Labels were made without human annotation (pseudo-labels); review them before relying on them.\n"
        )
        write_text(self.root / "README.md", text)
