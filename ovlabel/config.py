"""Stage configurations: plain dataclasses, importable without torch (the CLI reads their defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovlabel.errors import OvlabelError


@dataclass(frozen=True)
class DetectConfig:
    """Stage 1.1 parameters. The first six change results; the batch sizes only change speed/memory.

    - ``resolution``: short side (px) the image is over-sampled to before cropping.
    - ``crop_size``: sliding-window crop (px); None = CLIP's native input size. Must be a multiple of
      CLIP's patch size; other sizes interpolate CLIP's positional embeddings.
    - ``overlap``: fraction of a crop shared with its neighbour; the stride is rounded to whole patches.
    - ``max_aspect``: the long side is capped at ``resolution * max_aspect`` (very wide/tall images get a
      shorter short side instead of thousands of crops; no side drops below one crop).
    - ``min_crops``: a class is present when it is the best match of at least this many crops.
    - ``points_per_class``: point prompts per present class (FMbSeg: 5).
    - ``multimask``: let SAM propose 3 masks per prompt and keep the most confident (else one mask).
    """

    resolution: int = 672
    crop_size: int | None = None
    overlap: float = 0.5
    max_aspect: float = 4.0
    min_crops: int = 1
    points_per_class: int = 5
    multimask: bool = True
    clip_batch_size: int = 32
    sam_batch_size: int = 1

    def __post_init__(self):
        checks = [
            (self.resolution >= 16, "resolution", "an integer >= 16 (px)"),
            (self.crop_size is None or self.crop_size >= 16, "crop_size", "an integer >= 16 (px)"),
            (0.0 <= self.overlap < 1.0, "overlap", "a fraction in [0, 1)"),
            (self.max_aspect >= 1.0, "max_aspect", "a number >= 1"),
            (self.min_crops >= 1, "min_crops", "an integer >= 1"),
            (self.points_per_class >= 1, "points_per_class", "an integer >= 1"),
            (self.clip_batch_size >= 1, "clip_batch_size", "an integer >= 1"),
            (self.sam_batch_size >= 1, "sam_batch_size", "an integer >= 1"),
        ]
        _check(self, checks)

    def result_params(self) -> dict:
        """Parameters that change the labels (part of a run's settings fingerprint)."""
        d = asdict(self)
        del d["clip_batch_size"], d["sam_batch_size"]
        return d


def _check(obj, checks) -> None:
    for ok, name, accepted in checks:
        if not ok:
            raise OvlabelError(f"{name}={getattr(obj, name)!r} is invalid: expected {accepted}")


@dataclass(frozen=True)
class AutoMaskConfig:
    """Stage 1.2 automatic mask generation (seed 003 §3.2 "Automatic mask generation"), on the SAM image
    embedding Stage 1.1 already computed. Names and defaults follow segment-anything's
    ``SamAutomaticMaskGenerator`` where it has the knob; FMbSeg "constrain[s] the masks by size and
    predicted IOU", hence the two area bounds (see docs/stage1.2.md for why these defaults).

    - ``points_per_side``: a regular grid of this many points per side prompts SAM (SAM: 32).
    - ``points_per_batch``: prompts per mask-decoder call (speed/memory only).
    - ``pred_iou_thresh``: keep masks whose predicted IoU is at least this (SAM: 0.88).
    - ``stability_score_thresh`` / ``stability_score_offset``: keep masks whose IoU between the mask
      logits thresholded at ±offset is at least this (SAM: 0.95 / 1.0).
    - ``box_nms_thresh``: masks whose boxes overlap more than this IoU are duplicates (SAM: 0.7).
    - ``min_area`` / ``max_area``: area bounds as fractions of the image.
    - ``min_region_area``: fill holes and drop islands smaller than this many pixels (0 = off; SAM's
      ``min_mask_region_area``).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: float = 0.0005
    max_area: float = 0.95
    min_region_area: int = 0

    def __post_init__(self):
        _check(self, [
            (self.points_per_side >= 1, "points_per_side", "an integer >= 1"),
            (self.points_per_batch >= 1, "points_per_batch", "an integer >= 1"),
            (0.0 <= self.pred_iou_thresh <= 1.0, "pred_iou_thresh", "a number in [0, 1]"),
            (0.0 <= self.stability_score_thresh <= 1.0, "stability_score_thresh", "a number in [0, 1]"),
            (self.stability_score_offset >= 0.0, "stability_score_offset", "a number >= 0"),
            (0.0 < self.box_nms_thresh <= 1.0, "box_nms_thresh", "a number in (0, 1]"),
            (0.0 <= self.min_area < 1.0, "min_area", "a fraction of the image in [0, 1)"),
            (self.min_area < self.max_area <= 1.0, "max_area", f"a fraction in (min_area={self.min_area}, 1]"),
            (self.min_region_area >= 0, "min_region_area", "an integer >= 0 (pixels)"),
        ])

    def result_params(self) -> dict:
        d = asdict(self)
        del d["points_per_batch"]
        return d


CLASSIFIERS = ("fmbseg", "ovseg", "ensemble")


@dataclass(frozen=True)
class ClassifyConfig:
    """How Stage 1.2 masks get a class, among the classes Stage 1.1 detected in the image.

    - ``classifier``: ``fmbseg`` (seed 003 §3.2 "Mask labelling": mean of the dense CLIP feature map over
      the mask; no extra CLIP pass), ``ovseg`` (seed 002 §3.1: CLIP on the mask's tight box with the
      background blanked), or ``ensemble``: ``p^(1-λ) · p̂^λ`` (seed 002 §3.1, A.5) of the two.
    - ``ensemble_lambda``: λ, the weight of the masked-crop (OVSeg) probabilities. OVSeg A.5 uses 0.7
      for ADE20K and 0.6 for Pascal VOC/Context.
    - ``templates``: prompt templates of the masked-crop classifier (OVSeg A.2: the 14 ViLD templates).
    - ``top_k``: class scores kept per mask.
    """

    classifier: str = "fmbseg"
    ensemble_lambda: float = 0.7
    templates: str = "vild"
    top_k: int = 3

    def __post_init__(self):
        _check(self, [
            (self.classifier in CLASSIFIERS, "classifier", " or ".join(CLASSIFIERS)),
            (0.0 <= self.ensemble_lambda <= 1.0, "ensemble_lambda", "a number in [0, 1]"),
            (self.top_k >= 1, "top_k", "an integer >= 1"),
        ])

    @property
    def needs_crops(self) -> bool:
        return self.classifier in ("ovseg", "ensemble")

    def result_params(self) -> dict:
        d = asdict(self)
        if self.classifier != "ensemble":
            del d["ensemble_lambda"]
        if not self.needs_crops:
            del d["templates"]
        return d


PAINT_POLICIES = ("score", "stage1.1-first", "small-on-top")


@dataclass(frozen=True)
class MergeConfig:
    """How Stage 1.1 and 1.2 masks become one set of annotations and one label map per image.

    - ``stage12_ratio``: fraction of each image's Stage 1.2 masks kept (FMbSeg §4.1 samples Stage 1.2
      annotations to balance the two sources; the fraction it used is not in the text). Sampled
      without replacement, seeded by ``seed`` and the image's content hash: same inputs, same masks.
    - ``paint``: which mask wins a pixel where masks overlap in the label map: ``score`` (highest
      score; all scores are SAM's predicted IoU), ``stage1.1-first`` (Stage 1.1 masks over Stage 1.2,
      score within a stage), ``small-on-top`` (smaller masks over larger: objects stay visible on
      the regions around them).
    """

    stage12_ratio: float = 1.0
    seed: int = 0
    paint: str = "score"

    def __post_init__(self):
        _check(self, [
            (0.0 <= self.stage12_ratio <= 1.0, "stage12_ratio", "a fraction in [0, 1]"),
            (self.paint in PAINT_POLICIES, "paint", " or ".join(PAINT_POLICIES)),
        ])


STAGES = ("1.1", "1.2")


def parse_stages(text: str) -> tuple[str, ...]:
    """``"1.1,1.2"`` -> ``("1.1", "1.2")``; raises OvlabelError naming the bad value."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in STAGES]
    if bad or not items:
        raise OvlabelError(f"--stages {text!r} is invalid: expected a comma list of {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in items)


@dataclass
class PseudoLabelConfig:
    """Everything ``pseudo-label`` needs besides the input and output paths.

    ``models`` is a preset (``default`` or ``tiny``); ``clip``/``sam`` override one family
    (see :mod:`ovlabel.models.registry`). ``image_batch`` images are in flight at once: their CLIP crops
    share batches. ``overwrite`` redoes images that are already done.
    """

    vocab: str = "coco-stuff"
    templates: str = "fmbseg"
    models: str = "default"
    clip: str | None = None
    sam: str | None = None
    device: str = "auto"
    precision: str = "auto"
    stages: tuple[str, ...] = STAGES
    detect: DetectConfig = field(default_factory=DetectConfig)
    automask: AutoMaskConfig = field(default_factory=AutoMaskConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    image_batch: int = 8
    overwrite: bool = False
    overlays: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.image_batch < 1:
            raise OvlabelError(f"image_batch={self.image_batch!r} is invalid: expected an integer >= 1")
        if isinstance(self.stages, str):
            self.stages = parse_stages(self.stages)
        else:
            self.stages = parse_stages(",".join(self.stages))


def default_workers(cap: int = 8) -> int:
    """CPU cores this process may use, capped (each CRF worker holds a few K x H x W float32 arrays)."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, cap))


@dataclass(frozen=True)
class CRFConfig:
    """Dense-CRF refinement parameters (``refine``).

    The pairwise defaults are CutLER's (``maskcut/crf.py``: MAX_ITER=10, POS_W=7, POS_XY_STD=3, Bi_W=10,
    Bi_XY_STD=50, Bi_RGB_STD=5), which PnP-OVSS adopts without tuning (seed 004 §4.1).

    - ``iterations``: mean-field iterations.
    - ``pos_w``, ``pos_xy_std``: weight and spatial std (px) of the smoothness (Gaussian) kernel.
    - ``bi_w``, ``bi_xy_std``, ``bi_rgb_std``: weight, spatial std (px) and colour std (0-255 units) of the
      appearance (bilateral) kernel.
    - ``blur_sigma``: std of the Gaussian that smooths hard masks into unaries (seed 004 §3.3), as a fraction
      of the image's short side; 0 keeps the hard 0/1 masks. Not applied to stored soft maps.
    - ``prob_floor``: probabilities are clipped to at least this before ``-log`` (pydensecrf's default).
    - ``fill_unlabeled``: let the CRF assign a class to unlabeled (255) pixels; by default "unlabeled" is
      one more label the CRF may keep or shrink.
    - ``use_soft``: use a run's stored soft maps (``RUN/soft/``) as unaries where present.
    """

    iterations: int = 10
    pos_w: float = 7.0
    pos_xy_std: float = 3.0
    bi_w: float = 10.0
    bi_xy_std: float = 50.0
    bi_rgb_std: float = 5.0
    blur_sigma: float = 0.01
    prob_floor: float = 1e-5
    fill_unlabeled: bool = False
    use_soft: bool = True

    def __post_init__(self):
        checks = [
            (self.iterations >= 1, "iterations", "an integer >= 1"),
            (self.pos_w >= 0, "pos_w", "a number >= 0"),
            (self.pos_xy_std > 0, "pos_xy_std", "a number > 0 (px)"),
            (self.bi_w >= 0, "bi_w", "a number >= 0"),
            (self.bi_xy_std > 0, "bi_xy_std", "a number > 0 (px)"),
            (self.bi_rgb_std > 0, "bi_rgb_std", "a number > 0 (0-255 colour units)"),
            (0 <= self.blur_sigma <= 1, "blur_sigma", "a fraction of the short side in [0, 1]"),
            (0 < self.prob_floor < 0.5, "prob_floor", "a probability in (0, 0.5)"),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise OvlabelError(f"{name}={getattr(self, name)!r} is invalid: expected {accepted}")


@dataclass
class RefineConfig:
    """Everything ``refine`` needs besides the input run and the output folder.

    ``images`` overrides the image root recorded in the parent run (images moved); ``workers`` CRF
    processes run in parallel (pydensecrf is CPU-only and single-threaded).
    """

    crf: CRFConfig = field(default_factory=CRFConfig)
    images: str | None = None
    workers: int = field(default_factory=default_workers)
    overwrite: bool = False
    overlays: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.workers < 1:
            raise OvlabelError(f"workers={self.workers!r} is invalid: expected an integer >= 1")


#: Ground-truth layouts ``eval`` knows (see ovlabel/evaluate/layouts.py).
GT_LAYOUTS = ("auto", "folder", "voc2012", "pascal-context", "ade20k", "coco-stuff", "cityscapes")


@dataclass
class EvalConfig:
    """``eval`` options. None means "from the protocol, else from the layout, else the default".

    - ``protocol``: a preset name (:mod:`ovlabel.protocols`) supplying classes, layout, label reduction and
      background handling.
    - ``gt_layout``: one of :data:`GT_LAYOUTS`; ``split``: the split of a known layout (``val``).
    - ``gt_classes``: the ground truth's class list (a vocabulary spec: preset, file with synonyms, list);
      ``pred_classes``: the same for a prediction folder of PNGs (a run names its own).
    - ``reduce_zero_label``: mmseg's rule: GT 0 -> ignored, every other value minus one.
    - ``unlabeled_as``: the GT class that unlabeled prediction pixels count as (e.g. ``background``).
    - ``resize_pred``: ``none`` (size mismatch is an error) or ``nearest``.
    - ``allow_missing``: evaluate even when some ground-truth images have no prediction.
    - ``report``: JSON report path (the Markdown report goes next to it).
    """

    protocol: str | None = None
    gt_layout: str = "auto"
    split: str = "val"
    gt_classes: str | None = None
    pred_classes: str | None = None
    reduce_zero_label: bool | None = None
    unlabeled_as: str | None = None
    resize_pred: str = "none"
    allow_missing: bool = False
    report: str | None = None
    workers: int = 4
    progress: bool = True

    def __post_init__(self):
        if self.gt_layout not in GT_LAYOUTS:
            raise OvlabelError(f"gt_layout={self.gt_layout!r} is invalid: expected one of {', '.join(GT_LAYOUTS)}")
        if self.resize_pred not in ("none", "nearest"):
            raise OvlabelError(f"resize_pred={self.resize_pred!r} is invalid: expected 'none' or 'nearest'")
        if self.workers < 1:
            raise OvlabelError(f"workers={self.workers!r} is invalid: expected an integer >= 1")


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
    seed: int = 0
    feature_cache: str | None = None
    encoder_batch: int = 8
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    progress: bool = True

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
