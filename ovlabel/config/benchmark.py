"""``benchmark`` configuration: reproduce a published table's setting end to end."""

from __future__ import annotations

from dataclasses import dataclass

from ovlabel.config._checks import _check

BENCHMARK_PATHS = ("fmbseg", "training-free")


@dataclass
class BenchmarkConfig:
    """``ovlabel benchmark``: one dataset, one protocol preset, one method path, each step a normal run.

    - ``protocol``: a preset of :mod:`ovlabel.protocols` (its classes, ground-truth layout and background
      handling are used; its inference half reaches ``segment`` once ``segment`` takes a protocol).
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
      ``points_per_side``: Stage 1.2's grid (None = its default); ``train_resolution``: train-align's.
    - ``device``, ``progress``: as everywhere.
    """

    protocol: str = "tcl-voc21"
    path: str = "fmbseg"
    split: str = "val"
    train_images: str | None = None
    train_vocab: str | None = None
    checkpoint: str | None = None
    limit: int | None = None
    train_limit: int | None = None
    models: str = "default"
    clip: str | None = None
    sam: str | None = None
    dinov2: str | None = None
    epochs: int = 10
    resolution: int | None = None
    points_per_side: int | None = None
    train_resolution: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        _check(self, [
            (self.path in BENCHMARK_PATHS, "path", " or ".join(BENCHMARK_PATHS)),
            (self.limit is None or self.limit >= 1, "limit", "an integer >= 1"),
            (self.train_limit is None or self.train_limit >= 1, "train_limit", "an integer >= 1"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.points_per_side is None or self.points_per_side >= 1, "points_per_side", "an integer >= 1"),
        ])
