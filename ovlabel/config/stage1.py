"""``pseudo-label`` / ``classify-masks`` configurations (FMbSeg Stage 1.1 and 1.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovlabel.config._checks import _check
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


@dataclass(frozen=True)
class AutoMaskConfig:
    """Stage 1.2 automatic mask generation (seed 003 §3.2 "Automatic mask generation"), on the SAM image
    embedding Stage 1.1 already computed. Names and defaults follow segment-anything's
    ``SamAutomaticMaskGenerator`` where it has the knob; FMbSeg "constrain[s] the masks by size and
    predicted IOU", hence the two area bounds (see docs/stage1.2.md for why these defaults).

    - ``points_per_side``: a regular grid of this many points per side prompts SAM (SAM: 32).
    - ``points_per_batch``: prompts per mask-decoder call (speed/memory only).
    - ``pred_iou_thresh``: keep masks whose predicted IoU is at least this (SAM: 0.88). The predicted IoU
      is a regression output, roughly in [0, 1] but not bounded; a negative threshold keeps every mask.
    - ``stability_score_thresh`` / ``stability_score_offset``: keep masks whose IoU between the mask
      logits thresholded at ±offset is at least this (SAM: 0.95 / 1.0).
    - ``box_nms_thresh``: masks whose boxes overlap more than this IoU are duplicates (SAM: 0.7).
    - ``min_area`` / ``max_area``: area bounds as fractions of the image.
    - ``min_region_area``: fill holes and drop islands smaller than this many pixels (0 = off; SAM's
      ``min_mask_region_area``).
    - ``skip_covered``: fewer prompts (off by default until real weights show the recall): prompt a sparse
      sub-grid first (every ``skip_stride``-th point per side), then only the remaining grid points that
      do not fall on a pixel where a mask kept so far (past the IoU, stability and non-empty filters) has
      a logit above ``skip_logit_thresh``; all candidates then go through the same NMS. TinySAM's
      "hierarchical segment everything" (xinghaochen/TinySAM, ``tinysam/hierarchical_mask_generator.py``:
      4x sparser first grid, ``high_score_thresh=8.5``); see docs/stage1.2.md for where ovlabel differs.
    - ``skip_stride`` / ``skip_logit_thresh``: the first pass's spacing (grid points) and the logit above
      which a kept mask's pixel counts as covered.
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
    skip_covered: bool = False
    skip_stride: int = 4
    skip_logit_thresh: float = 8.5

    def __post_init__(self):
        _check(self, [
            (self.points_per_side >= 1, "points_per_side", "an integer >= 1"),
            (self.points_per_batch >= 1, "points_per_batch", "an integer >= 1"),
            (-1.0 <= self.pred_iou_thresh <= 1.0, "pred_iou_thresh", "a number in [-1, 1] (0.88 = 88%)"),
            (0.0 <= self.stability_score_thresh <= 1.0, "stability_score_thresh", "a number in [0, 1]"),
            (self.stability_score_offset >= 0.0, "stability_score_offset", "a number >= 0"),
            (0.0 < self.box_nms_thresh <= 1.0, "box_nms_thresh", "a number in (0, 1]"),
            (0.0 <= self.min_area < 1.0, "min_area", "a fraction of the image in [0, 1)"),
            (self.min_area < self.max_area <= 1.0, "max_area", f"a fraction in (min_area={self.min_area}, 1]"),
            (self.min_region_area >= 0, "min_region_area", "an integer >= 0 (pixels)"),
            (self.skip_stride >= 2, "skip_stride", "an integer >= 2 (grid points)"),
        ])

    def result_params(self) -> dict:
        """Parameters that change the masks; the skip knobs only when ``skip_covered`` is on (runs made
        before they existed keep their settings key)."""
        d = asdict(self)
        del d["points_per_batch"]
        if not self.skip_covered:
            del d["skip_covered"], d["skip_stride"], d["skip_logit_thresh"]
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

    Speed only (not in a run's settings): ``sdpa`` runs SAM's mask-decoder attention through PyTorch's
    fused ``scaled_dot_product_attention`` (same maths, float rounding differs; SAM 2 always does);
    ``compile`` wraps SAM's image encoder and mask decoder (SAM 2: its decoder) in ``torch.compile``
    (compiles on the first images; needs a C++ compiler on CPU, Triton on CUDA; slower than eager on the
    CPU measured in docs/benchmarks.md).
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
    sdpa: bool = True
    compile: bool = False
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
