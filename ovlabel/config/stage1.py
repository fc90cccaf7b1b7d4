"""``pseudo-label`` / ``classify-masks`` configurations (FMbSeg Stage 1.1 and 1.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovlabel.config._checks import _check, memory
from ovlabel.config._fields import knob
from ovlabel.config.run import ModelRunConfig
from ovlabel.errors import SettingError

#: Largest Stage 1.1 over-sampling resolution (short side, px).
MAX_RESOLUTION = 8192


def oversampled_memory(resolution: int, max_aspect: float) -> str:
    """``"; 20000 px takes about 42 GiB ..."`` for a resolution above :data:`MAX_RESOLUTION`, else ``""``: the
    over-sampled float32 RGB image plus CLIP's stitched feature map (768 floats per 14-px patch) of one
    image at the largest aspect ratio allowed, the memory such a value would need."""
    if not isinstance(resolution, int) or resolution <= MAX_RESOLUTION:
        return ""
    long_side = resolution * max(1.0, float(max_aspect))
    need = resolution * long_side * (3 * 4 + 768 * 4 / 14**2)
    return (f"; {resolution} px would take about {memory(need)} for one image (the over-sampled float32 image "
            f"and CLIP's feature map, long side up to --max-aspect {max_aspect:g} x that)")


@dataclass(frozen=True)
class DetectConfig:
    """Stage 1.1 parameters. All but the batch sizes change results; the batch sizes only change speed/memory.

    - ``resolution``: short side (px) the image is over-sampled to before cropping.
    - ``crop_size``: sliding-window crop (px); None = CLIP's native input size. Must be a multiple of
      CLIP's patch size; other sizes interpolate CLIP's positional embeddings.
    - ``overlap``: fraction of a crop shared with its neighbour; the stride is rounded to whole patches.
    - ``max_aspect``: the long side is capped at ``resolution * max_aspect`` (very wide/tall images get a
      shorter short side instead of thousands of crops; no side drops below one crop).
    - ``min_crops``: a class is present when it is the best match of at least this many crops. Default 2:
      seed 003 §3.2, "assigned to more than a predefined number of crops (set to 1 in our experiments)",
      i.e. more than one crop.
    - ``min_valid``: a crop votes only if at least this fraction of its area is image, not the padding
      that makes crops tile the over-sampled image (ovlabel's choice, docs/stage1.1.md: 0.5, so a crop that
      is mostly padding never votes). Its patch features still go into the feature map.
    - ``points_per_class``: point prompts per present class (FMbSeg: 5).
    - ``multimask``: let SAM propose 3 masks per prompt and keep the most confident (else one mask).
    """

    resolution: int = knob(672, help="Short side (px) the image is over-sampled to before cropping.")
    crop_size: int | None = knob(None, help="Sliding-window crop (px).", shown="CLIP's input size")
    overlap: float = knob(0.5, help="Fraction of a crop shared with its neighbour.")
    max_aspect: float = knob(4.0, help="Cap the over-sampled long side at resolution x this.")
    min_crops: int = knob(2, help="A class is present if it is the best match of at least this many crops "
                          "(FMbSeg: more than 1).")
    min_valid: float = knob(0.5, help="A crop votes only if at least this fraction of it is image, not padding.")
    points_per_class: int = knob(5, help="SAM point prompts per present class (the most similar patches).",
                                 flag="--points")
    multimask: bool = knob(True, help="Let SAM propose 3 masks per class and keep the most confident.",
                           flag="--multimask/--single-mask")
    clip_batch_size: int = knob(32, help="CLIP crops per forward pass.")
    sam_batch_size: int = knob(1, help="Images per SAM image-encoder pass.")

    def __post_init__(self):
        checks = [
            (16 <= self.resolution <= MAX_RESOLUTION, "resolution",
             f"an integer in [16, {MAX_RESOLUTION}] (px){oversampled_memory(self.resolution, self.max_aspect)}"),
            (self.crop_size is None or 16 <= self.crop_size <= 2048, "crop_size", "an integer in [16, 2048] (px)"),
            (0.0 <= self.overlap < 1.0, "overlap", "a fraction in [0, 1)"),
            (1.0 <= self.max_aspect <= 64.0, "max_aspect", "a number in [1, 64]"),
            (self.min_crops >= 1, "min_crops", "an integer >= 1 (crops)"),
            (0.0 <= self.min_valid <= 1.0, "min_valid", "a fraction of the crop in [0, 1]"),
            (1 <= self.points_per_class <= 256, "points_per_class", "an integer in [1, 256]"),
            (1 <= self.clip_batch_size <= 4096, "clip_batch_size", "an integer in [1, 4096]"),
            (1 <= self.sam_batch_size <= 256, "sam_batch_size", "an integer in [1, 256]"),
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

    points_per_side: int = knob(32, help="Stage 1.2: SAM prompt grid points per side.")
    points_per_batch: int = knob(64, help="Stage 1.2: prompts per SAM decoder call (speed/memory only).")
    pred_iou_thresh: float = knob(0.88, help="Stage 1.2: keep masks with SAM's predicted IoU at least this.")
    stability_score_thresh: float = knob(0.95, help="Stage 1.2: keep masks with a stability score at least this.",
                                         flag="--stability-thresh")
    stability_score_offset: float = knob(1.0, help="Stage 1.2: logit offset of the stability score.",
                                         flag="--stability-offset")
    box_nms_thresh: float = knob(0.7, help="Stage 1.2: box IoU above which masks are duplicates.")
    min_area: float = knob(0.0005, help="Stage 1.2: smallest mask kept, as a fraction of the image.")
    max_area: float = knob(0.95, help="Stage 1.2: largest mask kept, as a fraction of the image.")
    min_region_area: int = knob(0, help="Stage 1.2: fill holes and drop islands below this many pixels (0 = off).")
    skip_covered: bool = knob(False, help="Stage 1.2: prompt a sparse sub-grid first, then only grid points not "
                              "covered by a kept mask (TinySAM's hierarchical prompting; fewer decoder calls).",
                              flag="--skip-covered/--full-grid")
    skip_stride: int = knob(4, help="Stage 1.2 with --skip-covered: the first pass prompts every this-th grid point "
                            "per side.")
    skip_logit_thresh: float = knob(8.5, help="Stage 1.2 with --skip-covered: a point is covered where a kept "
                                    "mask's logit exceeds this (TinySAM: 8.5).")

    def __post_init__(self):
        _check(self, [
            (1 <= self.points_per_side <= 256, "points_per_side", "an integer in [1, 256] (a grid of up to 65536 "
             "prompts)"),
            (1 <= self.points_per_batch <= 4096, "points_per_batch",
             f"an integer in [1, 4096] (each prompt holds 3 low-resolution masks of 256 x 256 float32: "
             f"{memory(max(1, self.points_per_batch) * 3 * 256 * 256 * 4)} for {self.points_per_batch})"),
            (-1.0 <= self.pred_iou_thresh <= 1.0, "pred_iou_thresh", "a number in [-1, 1] (0.88 = 88%)"),
            (0.0 <= self.stability_score_thresh <= 1.0, "stability_score_thresh", "a number in [0, 1]"),
            (self.stability_score_offset >= 0.0, "stability_score_offset", "a number >= 0"),
            (0.0 < self.box_nms_thresh <= 1.0, "box_nms_thresh", "a number in (0, 1]"),
            (0.0 <= self.min_area < 1.0, "min_area", "a fraction of the image in [0, 1)"),
            (self.min_area < self.max_area <= 1.0, "max_area", f"a fraction in (min_area={self.min_area}, 1]"),
            (0 <= self.min_region_area <= 10**9, "min_region_area", "an integer in [0, 10**9] (pixels)"),
            (2 <= self.skip_stride <= 256, "skip_stride", "an integer in [2, 256] (grid points)"),
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


def _absolute(path: str) -> str:
    """A folder given on the command line, made absolute (it is recorded in run.json and reused from there)."""
    from pathlib import Path

    return str(Path(path).expanduser().resolve())
CROP_SHAPES = ("stretch", "pad")


@dataclass(frozen=True)
class ClassifyConfig:
    """How Stage 1.2 masks get a class, among the classes Stage 1.1 detected in the image.

    - ``classifier``: ``fmbseg`` (seed 003 §3.2 "Mask labelling": mean of the dense CLIP feature map over
      the mask; no extra CLIP pass), ``ovseg`` (seed 002 §3.1: CLIP on the mask's tight box with the
      background blanked), or ``ensemble``: ``p^(1-λ) · p̂^λ`` (seed 002 §3.1, A.5) of the two.
    - ``ensemble_lambda``: λ, the weight of the masked-crop (OVSeg) probabilities. OVSeg A.5 uses 0.7
      for ADE20K and 0.6 for Pascal VOC/Context.
    - ``templates``: prompt templates of the masked-crop classifier (OVSeg A.2: the 14 ViLD templates).
    - ``crop_shape``: how a masked crop's tight box becomes CLIP's square input: ``stretch`` (resized to
      it, aspect not kept: seed 002 §3.1 "re-size to CLIP's resolution", facebookresearch/ov-seg
      ``open_vocab_seg/modeling/clip_adapter/adapter.py``: ``F.interpolate(r, size=(224, 224))``) or ``pad``
      (centred on a square of the fill colour first, so the object keeps its aspect ratio: ovlabel's option).
    - ``top_k``: class scores kept per mask.
    - ``mpt``: a mask-prompt checkpoint folder written by ``ovlabel train-mpt`` (seed 002 §3.3: learned
      tokens replace the blank patches of the masked crops; :mod:`ovlabel.models.clip_mpt`), used by the
      ``ovseg`` and ``ensemble`` classifiers; None = plain CLIP. Runs are keyed on its weights' digest.
    """

    classifier: str = knob("fmbseg", help=f"Stage 1.2 mask classifier: {', '.join(CLASSIFIERS)}.")
    ensemble_lambda: float = knob(0.7, help="Weight of the masked-crop classifier in the ensemble p^(1-l)*p_crop^l.")
    templates: str = knob("vild", help="Templates of the masked-crop classifier (fmbseg, vild, imagenet or a file).",
                          flag="--crop-templates")
    crop_shape: str = knob("stretch", help="Masked crop to CLIP's square input: stretch (OVSeg's code) or pad (keep "
                           "the aspect ratio).")
    top_k: int = knob(3, help="Class scores kept per Stage 1.2 mask.")
    mpt: str | None = knob(None, help="Mask-prompt checkpoint from `ovlabel train-mpt` for the ovseg/ensemble "
                           "classifier (OVSeg 3.3).", parse=_absolute)

    def __post_init__(self):
        _check(self, [
            (self.classifier in CLASSIFIERS, "classifier", " or ".join(CLASSIFIERS)),
            (0.0 <= self.ensemble_lambda <= 1.0, "ensemble_lambda", "a number in [0, 1]"),
            (self.crop_shape in CROP_SHAPES, "crop_shape", " or ".join(CROP_SHAPES)),
            (1 <= self.top_k <= 1000, "top_k", "an integer in [1, 1000]"),
        ])

    @property
    def needs_crops(self) -> bool:
        return self.classifier in ("ovseg", "ensemble")

    def result_params(self) -> dict:
        d = asdict(self)
        if self.classifier != "ensemble":
            del d["ensemble_lambda"]
        if not self.needs_crops:
            del d["templates"], d["crop_shape"]
        del d["mpt"]  # the stage records the checkpoint's weights digest instead (ovlabel.labelling.stage1)
        return d


PAINT_POLICIES = ("score", "stage1.1-first", "small-on-top")


@dataclass(frozen=True)
class MergeConfig:
    """How Stage 1.1 and 1.2 masks become one set of annotations and one label map per image.

    - ``stage12_ratio``: fraction of each image's Stage 1.2 masks kept. FMbSeg §4.1: "in order to balance
      the pseudo annotations of these complementary methods, we randomly sample [ ] of annotations from
      stage 1.2"; the fraction did not survive in the text, so 0.2 is ovlabel's choice (docs/stage1.2.md). The one
      balancing rule of ovlabel: the run's artifacts (labels, masks, COCO) hold the sample and
      ``train-align`` trains on exactly them. Sampled without replacement, seeded by ``seed`` and the
      image's content hash: same inputs, same masks.
    - ``paint``: which mask wins a pixel where masks overlap in the label map: ``score`` (highest
      score; all scores are SAM's predicted IoU), ``stage1.1-first`` (Stage 1.1 masks over Stage 1.2,
      score within a stage), ``small-on-top`` (smaller masks over larger: objects stay visible on
      the regions around them).
    """

    stage12_ratio: float = knob(0.2, help="Fraction of each image's Stage 1.2 masks kept (seeded sample).")
    seed: int = knob(0, help="Seed of the Stage 1.2 sample.")
    paint: str = knob("score", help=f"Which mask wins overlapping pixels in label maps: {', '.join(PAINT_POLICIES)}.")

    def __post_init__(self):
        _check(self, [
            (0.0 <= self.stage12_ratio <= 1.0, "stage12_ratio", "a fraction in [0, 1]"),
            (0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)"),
            (self.paint in PAINT_POLICIES, "paint", " or ".join(PAINT_POLICIES)),
        ])

    def result_params(self) -> dict:
        """Every field changes the artifacts (the run records them as ``settings.merge``)."""
        return asdict(self)


STAGES = ("1.1", "1.2")


def parse_stages(text: str) -> tuple[str, ...]:
    """``"1.1,1.2"`` -> ``("1.1", "1.2")``; raises SettingError (``stages``) naming the bad value."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in STAGES]
    if bad or not items:
        raise SettingError("stages", text, f"a comma list of {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in items)


@dataclass
class PseudoLabelConfig(ModelRunConfig):
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

    vocab: str = knob("coco-stuff", help="Preset (coco-stuff, coco-object, voc, voc-bg, pascal-context, "
                      "pascal-context-60, ade20k, cityscapes), a class file, or a comma list 'rocket,bridge'.")
    templates: str = knob("fmbseg", help="Prompt templates: fmbseg ('a photo of a {}.'), vild (14), imagenet (80), "
                          "or a file.")
    models: str = knob("default", help="Model preset: 'default' (clip:ViT-L-14/openai + sam:vit_h) or 'tiny' "
                       "(random, for tests/offline demos).")
    clip: str | None = knob(None, help="CLIP model, e.g. clip:ViT-B-16/openai or clip:ViT-L-14/PATH (see `ovlabel "
                            "models`).", shown="the preset's")
    sam: str | None = knob(None, help="SAM model: sam:vit_h|vit_l|vit_b[/PATH or URL].", shown="the preset's")
    stages: tuple[str, ...] = knob(STAGES, help="FMbSeg stages to run: 1.1 (CLIP crops query SAM), 1.2 (SAM "
                                   "automatic masks classified by CLIP), or both.", parse=lambda v: v, shown="1.1,1.2")
    detect: DetectConfig = field(default_factory=DetectConfig)
    automask: AutoMaskConfig = field(default_factory=AutoMaskConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    image_batch: int = knob(8, help="Images in flight at once (their CLIP crops share batches).")
    captions: str | None = knob(None, help="Captions file (JSON lines or CSV: image, caption): each image is labelled "
                                "with the vocabulary classes its captions name only (OVSegmentor §3).", shown="none")
    captions_missing: str = knob("all", help="Images the captions name no class for: all (the whole vocabulary) or "
                                 "none (no class: unlabeled).")
    sdpa: bool = knob(True, help="Fused attention (scaled_dot_product_attention) in SAM's mask decoder (speed only).")
    compile: bool = knob(False, help="torch.compile SAM's encoder and mask decoder (slow first images; speed only).",
                         flag="--compile")

    def __post_init__(self):
        super().__post_init__()
        _check(self, [
            (self.captions_missing in ("all", "none"), "captions_missing", "all or none"),
            (1 <= self.image_batch <= 1024, "image_batch", "an integer in [1, 1024] (images in flight)"),
        ])
        if isinstance(self.stages, str):
            self.stages = parse_stages(self.stages)
        else:
            self.stages = parse_stages(",".join(self.stages))
