"""``benchmark`` configuration: reproduce a published table's setting end to end."""

from __future__ import annotations

from dataclasses import dataclass

from ovlabel.config._checks import _check
from ovlabel.config._fields import knob

BENCHMARK_PATHS = ("fmbseg", "training-free")


@dataclass
class BenchmarkConfig:
    """``ovlabel benchmark``: one dataset, one protocol preset, one method path, each step a normal run.

    - ``protocol``: a preset of :mod:`ovlabel.protocols`: its classes, ground-truth layout, background
      handling, and the inference settings ``segment`` runs with.
    - ``path``: ``fmbseg`` (seed 003 §4.1: pseudo-label an image set, train-align on it, segment the
      validation split, eval) or ``training-free`` (Stage 1 labels of the validation images evaluated
      directly; seed 003 "We evaluate stage 1.1 and 1.2 performance as training free methods").
    - ``split``: the evaluated split of the dataset (``val``).
    - ``train_images``: images to pseudo-label for ``fmbseg`` (a folder or list file); None = the
      dataset's own ``train`` split. FMbSeg used the 118k COCO-Stuff train images for every table entry.
    - ``train_vocab``: the vocabulary of those pseudo labels; None = the protocol's classes (FMbSeg:
      ``coco-stuff``, whatever the evaluated dataset).
    - ``checkpoint``: an existing train-align checkpoint: skips pseudo-labelling and training.
    - ``limit`` / ``train_limit``: use only the first N images (sorted by name) of the evaluated split /
      the training set, for smoke tests; None = all. A limited result is not the published setting.
    - ``models``, ``clip``, ``sam``, ``dinov2``: as in pseudo-label and train-align; ``epochs``: train-align
      epochs (FMbSeg: 10); ``resolution``: pseudo-label's Stage 1.1 resolution (None = its default);
      ``points_per_side``: Stage 1.2's grid (None = its default); ``train_resolution``: train-align's;
      ``pseudo_label_config``: a ``pseudo-label --config`` file for the pseudo-label step (any of its settings).
    - ``device``, ``progress``: as everywhere.
    """

    protocol: str = knob("tcl-voc21", help="Evaluation protocol preset (see `ovlabel protocols`), e.g. tcl-voc21.")
    path: str = knob("fmbseg", help=f"Method: {' or '.join(BENCHMARK_PATHS)} (Stage 1 labels evaluated directly).")
    split: str = knob("val", help="Evaluated split.")
    train_images: str | None = knob(None, help="fmbseg: images to pseudo-label (folder or list file). FMbSeg used "
                                    "COCO-Stuff train2017.", shown="the dataset's train split")
    train_vocab: str | None = knob(None, help="fmbseg: vocabulary of the pseudo labels (FMbSeg: coco-stuff).",
                                   shown="the protocol's classes")
    checkpoint: str | None = knob(None, help="fmbseg: an existing train-align checkpoint (skips pseudo-labelling and "
                                  "training).")
    limit: int | None = knob(None, help="Only the first N evaluated images (smoke test; not the published setting).",
                             shown="all")
    train_limit: int | None = knob(None, help="Only the first N training images.", shown="all")
    models: str = knob("default", help="Model preset: default or tiny (random, for tests).")
    clip: str | None = knob(None, help="CLIP model (see `ovlabel models`).", shown="the preset's")
    sam: str | None = knob(None, help="SAM model.", shown="the preset's")
    dinov2: str | None = knob(None, help="DINOv2 model for train-align.", shown="the preset's")
    epochs: int = knob(10, help="train-align epochs (FMbSeg: 10).")
    resolution: int | None = knob(None, help="pseudo-label: short side the image is over-sampled to.",
                                  shown="pseudo-label's")
    points_per_side: int | None = knob(None, help="pseudo-label: Stage 1.2 prompt grid points per side.",
                                       shown="pseudo-label's")
    train_resolution: int | None = knob(None, help="train-align: short side.", shown="train-align's")
    pseudo_label_config: str | None = knob(None, help="pseudo-label's settings as a --config file (TOML or JSON, "
                                           "e.g. [detect] min_crops = 1); the options above win.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    progress: bool = knob(True, help="Show progress bars.")

    def __post_init__(self):
        _check(self, [
            (self.path in BENCHMARK_PATHS, "path", " or ".join(BENCHMARK_PATHS)),
            (self.limit is None or self.limit >= 1, "limit", "an integer >= 1"),
            (self.train_limit is None or self.train_limit >= 1, "train_limit", "an integer >= 1"),
            (1 <= self.epochs <= 10_000, "epochs", "an integer in [1, 10000]"),
            (self.points_per_side is None or 1 <= self.points_per_side <= 256, "points_per_side",
             "an integer in [1, 256]"),
            (self.resolution is None or 16 <= self.resolution <= 8192, "resolution", "an integer in [16, 8192] (px)"),
            (self.train_resolution is None or 14 <= self.train_resolution <= 2048, "train_resolution",
             "an integer in [14, 2048] (px)"),
        ])
