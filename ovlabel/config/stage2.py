"""``train-align`` and ``segment`` configurations (FMbSeg Stage 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.config._checks import _check
from ovlabel.config._fields import knob
from ovlabel.config.run import ModelRunConfig


@dataclass
class TrainAlignConfig:
    """``train-align`` (FMbSeg Stage 2, seed 003 §3.3 and §4.1).

    Models: ``dinov2`` (default: the ``models`` preset's, ``dinov2:dinov2_vitl14`` as in §4.1) is the
    frozen vision encoder; ``clip`` (default: the CLIP the run was labelled with) gives the frozen text
    features, with the run's templates. From the paper: SGD, cosine annealing, ``batch_size`` 5 images,
    ``epochs`` 10, random subsampling of Stage 1.2 masks (its fraction was lost from the text: 0.2 here).
    Not in the paper, so chosen here: ``resolution`` (short side, px), ``temperature``, ``lr``,
    ``momentum``, ``weight_decay``, ``min_labelled`` (share of a patch that must be labelled).
    ``feature_cache``: a folder for fp16 encoder features, ``"none"`` to keep none, None = the ovlabel
    cache. ``resume`` continues the checkpoint in ``out`` from its last finished epoch.
    """

    models: str = knob("default", help="Model preset for the vision encoder: 'default' (dinov2:dinov2_vitl14) or 'tiny'.")
    dinov2: str | None = knob(None, help="Vision encoder, e.g. dinov2:dinov2_vitb14, dinov2:dinov2_vitl14_reg, "
                              "dinov2:dinov2_vitl14/PATH.", shown="the preset's")
    clip: str | None = knob(None, help="Text encoder.", shown="the CLIP the run was labelled with")
    images: str | None = knob(None, help="Image root, if the run's images moved since it was labelled.",
                              shown="the run's")
    resolution: int = knob(448, help="Short side (px) images are resized to before the encoder (rounded to 14-px "
                           "patches).")
    max_aspect: float = knob(2.0, help="Cap the long side at resolution x this.")
    epochs: int = knob(10, help="Training epochs (FMbSeg: 10).")
    batch_size: int = knob(5, help="Images per step (FMbSeg: 5).")
    lr: float = knob(0.05, help="SGD learning rate (cosine-annealed to 0 over all steps).")
    momentum: float = knob(0.9, help="SGD momentum.")
    weight_decay: float = knob(1e-4, help="SGD weight decay.")
    temperature: float = knob(0.07, help="Contrastive loss temperature.")
    stage12_fraction: float = knob(0.2, help="Fraction of Stage 1.2 masks kept (random, seeded; FMbSeg 4.1).")
    min_labelled: float = knob(0.5, help="A patch is trained on if labelled pixels cover at least this share of it.")
    num_heads: int | None = knob(None, help="Attention heads of the alignment block.", shown="embedding dim / 64")
    mlp_ratio: float = knob(4.0, help="Hidden size of the alignment block's MLP, times its width.")
    seed: int = knob(0, help="Seed for initialisation, image order and Stage 1.2 subsampling.")
    feature_cache: str | None = knob(None, help="Folder for cached fp16 encoder features ('none' to disable).",
                                     shown="the ovlabel cache")
    encoder_batch: int = knob(8, help="Images per encoder forward when computing features.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    resume: bool = knob(False, help="Continue the checkpoint in --out from its last finished epoch.", flag="--resume")
    progress: bool = knob(True, help="Show a progress bar.")

    def __post_init__(self):
        _check(self, [
            (self.resolution >= 14, "resolution", "an integer >= 14 (px)"),
            (self.max_aspect >= 1.0, "max_aspect", "a number >= 1"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.lr > 0, "lr", "a number > 0"),
            (0.0 <= self.momentum < 1.0, "momentum", "a number in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.temperature > 0, "temperature", "a number > 0"),
            (0.0 <= self.stage12_fraction <= 1.0, "stage12_fraction", "a fraction in [0, 1]"),
            (0.0 <= self.min_labelled <= 1.0, "min_labelled", "a fraction in [0, 1]"),
            (self.num_heads is None or self.num_heads >= 1, "num_heads", "an integer >= 1"),
            (self.mlp_ratio > 0, "mlp_ratio", "a number > 0"),
            (self.encoder_batch >= 1, "encoder_batch", "an integer >= 1"),
        ])

    def result_params(self) -> dict:
        """Parameters that change the trained weights (a checkpoint's settings fingerprint)."""
        d = asdict(self)
        for k in ("models", "dinov2", "clip", "images", "feature_cache", "encoder_batch", "device", "precision", "resume", "progress"):
            del d[k]
        return d


@dataclass
class SegmentConfig(ModelRunConfig):
    """``segment``: label new images with a trained alignment checkpoint and any class names.

    ``classes``: a preset, class file or comma list. ``templates``/``resolution``: None = the
    checkpoint's. ``dinov2``/``clip``: None = the encoders the checkpoint was trained with (override only
    to point at the same weights in another place). ``refine``: dense-CRF refinement of the upsampled
    class probabilities. ``overwrite``/``overlays``/``progress``/``image_batch`` as in pseudo-label.
    """

    classes: str = knob("", help="Classes: a comma list 'rocket,bridge', a class file, or a preset (voc, ade20k, ...).",
                        shown="none: required")
    checkpoint: str | None = knob(None, help="Checkpoint folder written by train-align.", shown="none: required")
    templates: str | None = knob(None, help="Prompt templates.", shown="the checkpoint's")
    resolution: int | None = knob(None, help="Short side (px) for the encoder.", shown="the checkpoint's")
    dinov2: str | None = knob(None, help="Vision encoder (override only to relocate its weights).",
                              shown="the checkpoint's")
    clip: str | None = knob(None, help="Text encoder.", shown="the checkpoint's")
    refine: bool = knob(False, help="Refine the upsampled class probabilities with a dense CRF.", flag="--refine")
    image_batch: int = knob(4, help="Images read ahead and processed per batch.")

    def __post_init__(self):
        super().__post_init__()
        _check(self, [
            (self.resolution is None or self.resolution >= 14, "resolution", "an integer >= 14 (px)"),
            (self.image_batch >= 1, "image_batch", "an integer >= 1"),
        ])
