"""``train-align`` and ``segment`` configurations (FMbSeg Stage 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.config._checks import _check


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

    Heads and encoders (Fusioner, seed 000; :mod:`ovlabel.stages.fusioner`, :mod:`ovlabel.stages.encoders`):

    - ``head``: ``fmbseg`` (FMbSeg's alignment module, default) or ``fusioner`` (early fusion of patch
      and class tokens). Recorded in the checkpoint; ``segment`` picks the head from it.
    - ``vision_encoder``: ``dinov2`` (the ``dinov2`` model, default) or ``clip`` (the image tower of the
      ``clip`` model, Fusioner's read-out).
    - ``text_encoder``: None/``clip`` (CLIP's text tower) or a language-only transformers model:
      ``bert:tiny``, ``bert-base-uncased`` (any Hub repo id), or a ``save_pretrained`` folder.
    - ``fusion_width``/``fusion_layers``/``fusion_heads``: the fusion transformer (Fusioner's released
      configs: 512, 12, 8); ``fusion_lr``/``fusion_weight_decay``: its AdamW (released: 1e-3, 0.01);
      ``lr``/``momentum``/``weight_decay`` are the FMbSeg head's SGD settings and do not apply to it.
    """

    models: str = "default"
    dinov2: str | None = None
    clip: str | None = None
    images: str | None = None
    resolution: int = 448
    max_aspect: float = 2.0
    epochs: int = 10
    batch_size: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 0.07
    stage12_fraction: float = 0.2
    min_labelled: float = 0.5
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    head: str = "fmbseg"
    vision_encoder: str = "dinov2"
    text_encoder: str | None = None
    fusion_width: int = 512
    fusion_layers: int = 12
    fusion_heads: int = 8
    fusion_lr: float = 1e-3
    fusion_weight_decay: float = 0.01
    seed: int = 0
    feature_cache: str | None = None
    encoder_batch: int = 8
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.text_encoder in ("", "clip"):
            self.text_encoder = None  # CLIP's text tower
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
            (self.head in ("fmbseg", "fusioner"), "head", "fmbseg or fusioner"),
            (self.vision_encoder in ("dinov2", "clip"), "vision_encoder", "dinov2 or clip"),
            (self.fusion_width >= 1 and self.fusion_heads >= 1 and self.fusion_width % self.fusion_heads == 0,
             "fusion_width", f"a multiple of fusion_heads={self.fusion_heads}"),
            (self.fusion_layers >= 1, "fusion_layers", "an integer >= 1"),
            (self.fusion_lr > 0, "fusion_lr", "a number > 0"),
            (self.fusion_weight_decay >= 0, "fusion_weight_decay", "a number >= 0"),
        ])

    def result_params(self) -> dict:
        """Parameters that change the trained weights (a checkpoint's settings fingerprint). The head and
        encoder choices appear only when they differ from FMbSeg's (so older checkpoints keep their key);
        the fusion settings only with the Fusioner head, the SGD settings only with FMbSeg's."""
        d = asdict(self)
        for k in ("models", "dinov2", "clip", "images", "feature_cache", "encoder_batch", "device", "precision", "resume", "progress"):
            del d[k]
        for k, default in (("head", "fmbseg"), ("vision_encoder", "dinov2"), ("text_encoder", None)):
            if d[k] == default:
                del d[k]
        fusion = [k for k in d if k.startswith("fusion_")]
        for k in (fusion if self.head == "fmbseg" else ["lr", "momentum", "weight_decay", "num_heads", "mlp_ratio"]):
            del d[k]
        return d


@dataclass
class SegmentConfig:
    """``segment``: label new images with a trained alignment checkpoint and any class names.

    ``classes``: a preset, class file or comma list. ``templates``/``resolution``: None = the
    checkpoint's. ``dinov2``/``clip``: None = the encoders the checkpoint was trained with (override only
    to point at the same weights in another place). ``refine``: dense-CRF refinement of the upsampled
    class probabilities. ``overwrite``/``overlays``/``progress``/``image_batch`` as in pseudo-label.
    """

    classes: str = ""
    checkpoint: str | None = None
    templates: str | None = None
    resolution: int | None = None
    dinov2: str | None = None
    clip: str | None = None
    refine: bool = False
    device: str = "auto"
    precision: str = "auto"
    image_batch: int = 4
    overwrite: bool = False
    overlays: bool = False
    progress: bool = True

    def __post_init__(self):
        _check(self, [
            (self.resolution is None or self.resolution >= 14, "resolution", "an integer >= 14 (px)"),
            (self.image_batch >= 1, "image_batch", "an integer >= 1"),
        ])
