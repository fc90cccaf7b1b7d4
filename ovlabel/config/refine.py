"""``refine`` and ``eval`` configurations (dense CRF, mIoU scoring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovlabel.config._checks import _check  # noqa: F401  (shared validation)
from ovlabel.errors import OvlabelError


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
    - ``blur_sigma``: std of the Gaussian that smooths masks into unaries (seed 004 §3.3), as a fraction of
      the image's side named by ``blur_side``; 0 keeps the masks unblurred. Not applied to stored soft maps.
    - ``blur_side``: ``long`` (default: PnP-OVSS's released code blurs with ``scale * max(img_shape)``,
      letitiabanana/PnP-OVSS ``PnP_OVSS_0514_updated_segmentation.py``, ``blurring``) or ``short``.
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
    blur_side: str = "long"
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
            (0 <= self.blur_sigma <= 1, "blur_sigma", "a fraction of the image side in [0, 1]"),
            (self.blur_side in ("long", "short"), "blur_side", "'long' or 'short'"),
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
