"""``train-align`` and ``segment`` configurations (FMbSeg Stage 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.config._checks import _check, memory
from ovlabel.config._fields import knob
from ovlabel.config.run import ModelRunConfig

#: Largest input side of the frozen vision encoder in train-align (short side) and segment (window), px.
MAX_ENCODER_RESOLUTION = 2048


def attention_memory(side: int, aspect: float) -> str:
    """``"; 4096 px would take ..."`` for an encoder input above :data:`MAX_ENCODER_RESOLUTION`, else ``""``:
    one float32 attention map over its 14-px patch tokens (what one head of one layer holds)."""
    if not isinstance(side, int) or side <= MAX_ENCODER_RESOLUTION:
        return ""
    tokens = (side / 14) ** 2 * max(1.0, float(aspect))
    return (f"; {side} px would take about {memory(tokens * tokens * 4)} for one attention map of the vision "
            f"encoder ({tokens:,.0f} patch tokens)")


@dataclass
class TrainAlignConfig:
    """``train-align`` (FMbSeg Stage 2, seed 003 §3.3 and §4.1).

    Models: ``dinov2`` (default: the ``models`` preset's, ``dinov2:dinov2_vitl14`` as in §4.1) is the
    frozen vision encoder; ``clip`` (default: the CLIP the run was labelled with) gives the frozen text
    features, with the run's templates. From the paper: SGD, cosine annealing, ``batch_size`` 5 images,
    ``epochs`` 10. The training labels are the run's merged masks, painted with the run's ``paint`` policy:
    FMbSeg's random subsampling of Stage 1.2 masks (§4.1) is the run's ``stage12_ratio``
    (:class:`ovlabel.config.MergeConfig`; change it with ``classify-masks RUN --stage12-ratio``).
    Not in the paper, so chosen here: ``resolution`` (short side, px), ``temperature``, ``lr``,
    ``momentum``, ``weight_decay``, ``min_labelled`` (share of a patch that must be labelled).
    ``loss_norm``: how Eq. 1 averages its two terms (:mod:`ovlabel.loss`): ``batch`` (over the classes in the
    batch and the patches with a positive) or ``literal`` (1/K over all text features, 1/(B·N) over all
    patches); default ``batch``, which trained better on the synthetic scenes (docs/stage2.md, measured by
    ``benchmarks/loss_norm.py``).
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
    loss_norm: str = knob("batch", help="Eq. 1 averaging: batch (over the batch's classes and patches) or literal "
                          "(1/K, 1/(B*N)).")
    min_labelled: float = knob(0.5, help="A patch is trained on if labelled pixels cover at least this share of it.")
    num_heads: int | None = knob(None, help="Attention heads of the alignment block.", shown="embedding dim / 64")
    mlp_ratio: float = knob(4.0, help="Hidden size of the alignment block's MLP, times its width.")
    head: str = knob("fmbseg", help="Stage 2 head: fmbseg (FMbSeg's alignment module) or fusioner (Fusioner's early "
                     "fusion of patch and class tokens).")
    vision_encoder: str = knob("dinov2", help="Frozen vision encoder: dinov2 (--dinov2) or clip (the image tower of "
                               "--clip).")
    text_encoder: str | None = knob(None, help="Frozen text encoder: clip, or a language-only transformers model: "
                                    "bert-base-uncased, bert:tiny, a save_pretrained folder.", shown="clip")
    fusion_width: int = knob(512, help="Fusioner head: transformer width.")
    fusion_layers: int = knob(12, help="Fusioner head: transformer blocks.")
    fusion_heads: int = knob(8, help="Fusioner head: attention heads.")
    fusion_lr: float = knob(1e-3, help="Fusioner head: AdamW learning rate (cosine-annealed).")
    fusion_weight_decay: float = knob(0.01, help="Fusioner head: AdamW weight decay.")
    seed: int = knob(0, help="Seed for initialisation and image order.")
    feature_cache: str | None = knob(None, help="Folder for cached fp16 encoder features ('none' to disable).",
                                     shown="the ovlabel cache")
    encoder_batch: int = knob(8, help="Images per encoder forward when computing features.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    resume: bool = knob(False, help="Continue the checkpoint in --out from its last finished epoch.", flag="--resume")
    progress: bool = knob(True, help="Show a progress bar.")

    def __post_init__(self):
        if self.text_encoder in ("", "clip"):
            self.text_encoder = None  # CLIP's text tower
        _check(self, [
            (14 <= self.resolution <= MAX_ENCODER_RESOLUTION, "resolution",
             f"an integer in [14, {MAX_ENCODER_RESOLUTION}] (px){attention_memory(self.resolution, self.max_aspect)}"),
            (1.0 <= self.max_aspect <= 16.0, "max_aspect", "a number in [1, 16]"),
            (1 <= self.epochs <= 10_000, "epochs", "an integer in [1, 10000]"),
            (1 <= self.batch_size <= 4096, "batch_size", "an integer in [1, 4096] (images per step)"),
            (0 < self.lr <= 100, "lr", "a number in (0, 100]"),
            (0.0 <= self.momentum < 1.0, "momentum", "a number in [0, 1)"),
            (0 <= self.weight_decay <= 1, "weight_decay", "a number in [0, 1]"),
            (0 < self.temperature <= 100, "temperature", "a number in (0, 100]"),
            (self.loss_norm in ("batch", "literal"), "loss_norm", "'batch' or 'literal'"),
            (0.0 <= self.min_labelled <= 1.0, "min_labelled", "a fraction in [0, 1]"),
            (self.num_heads is None or 1 <= self.num_heads <= 256, "num_heads", "an integer in [1, 256]"),
            (0 < self.mlp_ratio <= 64, "mlp_ratio", "a number in (0, 64]"),
            (1 <= self.encoder_batch <= 4096, "encoder_batch", "an integer in [1, 4096]"),
            (self.head in ("fmbseg", "fusioner"), "head", "fmbseg or fusioner"),
            (self.vision_encoder in ("dinov2", "clip"), "vision_encoder", "dinov2 or clip"),
            (1 <= self.fusion_heads <= 256, "fusion_heads", "an integer in [1, 256]"),
            (1 <= self.fusion_width <= 16384 and self.fusion_width % self.fusion_heads == 0,
             "fusion_width", f"a multiple of fusion_heads={self.fusion_heads} in [1, 16384]"),
            (1 <= self.fusion_layers <= 256, "fusion_layers", "an integer in [1, 256]"),
            (0 < self.fusion_lr <= 100, "fusion_lr", "a number in (0, 100]"),
            (0 <= self.fusion_weight_decay <= 1, "fusion_weight_decay", "a number in [0, 1]"),
            (0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)"),
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
class SegmentConfig(ModelRunConfig):
    """``segment``: label new images with a trained alignment checkpoint and any class names.

    ``classes``: a preset, class file or comma list. ``templates``: None = the checkpoint's. ``dinov2``/``clip``:
    None = the encoders the checkpoint was trained with (override only to point at the same weights in
    another place). ``refine``: dense-CRF refinement of the upsampled class probabilities.
    ``overwrite``/``overlays``/``progress``/``image_batch`` as in pseudo-label.

    Inference (:mod:`ovlabel.stages.segment_infer`); None = the ``protocol`` preset's value, else the default:

    - ``protocol``: an evaluation preset of :mod:`ovlabel.protocols` (e.g. ``fmbseg-voc21``, ``sclip-voc21``).
    - ``resolution``: short side (px) images are resized to (default: the checkpoint's training resolution).
    - ``window``, ``stride``: sliding window and stride (px) on the resized image (default: FMbSeg's
      protocol, TCL's 448 / 224, seed 003 §4.1); ``window`` 0 = the whole image at once.
    - ``background_prompts``: classes prompted in place of a class named ``background`` and predicting it
      (default: FMbSeg's, the 91 COCO-Stuff stuff classes, when the class list has a ``background`` class;
      ``none`` = prompt the background class by its own name).
    - ``bg_threshold``: a pixel whose top probability is below this is background (default 0 = off);
      ``logit_scale``: the scale of that softmax (default: 1 / the checkpoint's temperature);
      ``area_threshold``: SCLIP's VOC rule, classes below this share of the foreground are dropped (0 = off).
    """

    classes: str = knob("", help="Classes: a comma list 'rocket,bridge', a class file, or a preset (voc, ade20k, ...).",
                        shown="none: required")
    checkpoint: str | None = knob(None, help="Checkpoint folder written by train-align.", shown="none: required")
    templates: str | None = knob(None, help="Prompt templates.", shown="the checkpoint's")
    resolution: int | None = knob(None, help="Short side (px) images are resized to.",
                                  shown="the protocol's, else the checkpoint's")
    protocol: str | None = knob(None, help="Evaluation preset for inference: short side, sliding window, background "
                                "rule (e.g. fmbseg-voc21, sclip-voc21; see `ovlabel protocols`).")
    window: int | None = knob(None, help="Sliding window (px) on the resized image; 0 = whole image.",
                              shown="the protocol's, else 448 as FMbSeg/TCL")
    stride: int | None = knob(None, help="Sliding-window stride (px).", shown="the protocol's, else 224")
    background_prompts: str | None = knob(None, help="Classes prompted for a class named 'background' (preset, file "
                                          "or list; 'none' = prompt 'background').",
                                          shown="the protocol's, else coco-stuff-stuff as FMbSeg PV-21")
    bg_threshold: float | None = knob(None, help="Pixels whose top class probability is below this are background.",
                                      shown="the protocol's, else off")
    logit_scale: float | None = knob(None, help="Scale of the similarity softmax for --bg-threshold.",
                                     shown="the protocol's, else 1/temperature")
    area_threshold: float | None = knob(None, help="Drop classes covering less than this share of the foreground "
                                        "(SCLIP VOC).", shown="the protocol's, else off")
    dinov2: str | None = knob(None, help="Vision encoder (override only to relocate its weights).",
                              shown="the checkpoint's")
    clip: str | None = knob(None, help="Text encoder.", shown="the checkpoint's")
    refine: bool = knob(False, help="Refine the upsampled class probabilities with a dense CRF.", flag="--refine")
    image_batch: int = knob(4, help="Images read ahead and processed per batch.")

    def __post_init__(self):
        super().__post_init__()
        _check(self, [
            (self.resolution is None or 14 <= self.resolution <= 8192, "resolution", "an integer in [14, 8192] (px)"),
            (self.window is None or self.window == 0 or 14 <= self.window <= MAX_ENCODER_RESOLUTION, "window",
             f"0 (whole image) or an integer in [14, {MAX_ENCODER_RESOLUTION}] (px)"
             f"{attention_memory(self.window or 0, 1.0)}"),
            (self.stride is None or 1 <= self.stride <= 8192, "stride", "an integer in [1, 8192] (px)"),
            (self.bg_threshold is None or 0.0 <= self.bg_threshold <= 1.0, "bg_threshold", "a probability in [0, 1]"),
            (self.logit_scale is None or 0 < self.logit_scale <= 1e4, "logit_scale", "a number in (0, 1e4]"),
            (self.area_threshold is None or 0.0 <= self.area_threshold <= 1.0, "area_threshold",
             "a fraction in [0, 1]"),
            (1 <= self.image_batch <= 1024, "image_batch", "an integer in [1, 1024]"),
        ])
        if self.protocol is not None:
            from ovlabel.protocols import get_protocol

            get_protocol(self.protocol)  # an unknown name fails now, listing the known ones

    def result_params(self) -> dict:
        """The options that change the labels as given (``segment`` records them resolved against the
        protocol and the checkpoint: :func:`ovlabel.stages.segment_infer.resolve`)."""
        from dataclasses import fields

        from ovlabel.config.run import ModelRunConfig

        d = asdict(self)
        for k in ("checkpoint", "dinov2", "clip", "image_batch", *(f.name for f in fields(ModelRunConfig))):
            del d[k]
        return d
