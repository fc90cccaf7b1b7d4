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
        for ok, name, accepted in checks:
            if not ok:
                raise OvlabelError(f"{name}={getattr(self, name)!r} is invalid: expected {accepted}")

    def result_params(self) -> dict:
        """Parameters that change the labels (part of a run's settings fingerprint)."""
        d = asdict(self)
        del d["clip_batch_size"], d["sam_batch_size"]
        return d



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
    detect: DetectConfig = field(default_factory=DetectConfig)
    image_batch: int = 8
    overwrite: bool = False
    overlays: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.image_batch < 1:
            raise OvlabelError(f"image_batch={self.image_batch!r} is invalid: expected an integer >= 1")
