"""``refine`` and ``eval`` configurations (dense CRF, mIoU scoring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovlabel.config._checks import _check
from ovlabel.config._fields import knob
from ovlabel.config.run import MAX_WORKERS, RunConfig


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

    iterations: int = knob(10, help="Mean-field iterations.")
    pos_w: float = knob(7.0, help="Smoothness kernel weight.")
    pos_xy_std: float = knob(3.0, help="Smoothness kernel spatial std (px).")
    bi_w: float = knob(10.0, help="Appearance (bilateral) kernel weight.")
    bi_xy_std: float = knob(50.0, help="Appearance kernel spatial std (px).")
    bi_rgb_std: float = knob(5.0, help="Appearance kernel colour std (0-255).")
    blur_sigma: float = knob(0.01, help="Gaussian blur of hard masks before the CRF, as a fraction of the long side "
                             "(PnP-OVSS §3.3); 0 = none.")
    blur_side: str = knob("long", help="The image side --blur-sigma is a fraction of: long (PnP-OVSS's code) or short.")
    prob_floor: float = knob(1e-5, help="Probabilities are clipped to at least this before -log.")
    fill_unlabeled: bool = knob(False, help="Let the CRF give a class to unlabeled pixels (default: unlabeled is a "
                                "label it may keep).", flag="--fill-unlabeled")
    use_soft: bool = knob(True, help="Use the run's stored soft maps (RUN/soft/) as unaries where present.",
                          flag="--soft/--no-soft")

    def __post_init__(self):
        _check(self, [
            (1 <= self.iterations <= 1000, "iterations", "an integer in [1, 1000]"),
            (0 <= self.pos_w <= 1e6, "pos_w", "a number in [0, 1e6]"),
            (0 < self.pos_xy_std <= 1e5, "pos_xy_std", "a number in (0, 1e5] (px)"),
            (0 <= self.bi_w <= 1e6, "bi_w", "a number in [0, 1e6]"),
            (0 < self.bi_xy_std <= 1e5, "bi_xy_std", "a number in (0, 1e5] (px)"),
            (0 < self.bi_rgb_std <= 1e4, "bi_rgb_std", "a number in (0, 1e4] (0-255 colour units)"),
            (0 <= self.blur_sigma <= 1, "blur_sigma", "a fraction of the image side in [0, 1]"),
            (self.blur_side in ("long", "short"), "blur_side", "'long' or 'short'"),
            (0 < self.prob_floor < 0.5, "prob_floor", "a probability in (0, 0.5)"),
        ])


@dataclass
class RefineConfig(RunConfig):
    """Everything ``refine`` needs besides the input run and the output folder.

    ``images`` overrides the image root recorded in the parent run (images moved); ``workers`` CRF
    processes run in parallel (pydensecrf is CPU-only and single-threaded; default: the usable cores).
    """

    crf: CRFConfig = field(default_factory=CRFConfig)
    images: str | None = knob(None, help="Image root, if the images moved since the run.", shown="the run's")
    workers: int = knob(help="CRF worker processes.", factory=default_workers, shown="the usable CPU cores, at most 8")

    def __post_init__(self):
        super().__post_init__()
        _check(self, [(self.workers is not None and 1 <= self.workers <= MAX_WORKERS, "workers",
                       f"an integer in [1, {MAX_WORKERS}] (CRF processes)")])


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

    protocol: str | None = knob(None, help="Published setting supplying classes, layout and background handling, "
                                "e.g. sclip-voc21 (see `ovlabel protocols`).")
    gt_layout: str = knob("auto", help=f"Ground-truth layout: {', '.join(GT_LAYOUTS)}.")
    split: str = knob("val", help="Split of a known layout.")
    gt_classes: str | None = knob(None, help="GT class list (vocabulary preset, file with synonyms, or comma list).",
                                  shown="from the protocol/layout, else the run's vocabulary")
    pred_classes: str | None = knob(None, help="Class list of a PNG-folder PRED (a run names its own).",
                                    shown="the GT's")
    reduce_zero_label: bool | None = knob(None, help="GT 0 is ignored and other values shift down by one.",
                                          shown="by protocol/layout")
    unlabeled_as: str | None = knob(None, help="GT class that unlabeled (255) predictions count as, e.g. background.",
                                    shown="by protocol; else they count as wrong")
    resize_pred: str = knob("none", help="'none': a size mismatch is an error; 'nearest': resize predictions to the "
                            "GT size.")
    allow_missing: bool = knob(False, help="Score even if some GT images have no prediction (they are listed in the "
                               "report).", flag="--allow-missing")
    report: str | None = knob(None, help="JSON report path; the Markdown report goes next to it.",
                              shown="RUN/eval/<name>.json")
    workers: int = knob(4, help="Threads reading PNGs.")
    progress: bool = knob(True, help="Show a progress bar.")

    def __post_init__(self):
        _check(self, [
            (self.gt_layout in GT_LAYOUTS, "gt_layout", f"one of {', '.join(GT_LAYOUTS)}"),
            (self.resize_pred in ("none", "nearest"), "resize_pred", "'none' or 'nearest'"),
            (1 <= self.workers <= 256, "workers", "an integer in [1, 256] (threads)"),
        ])
