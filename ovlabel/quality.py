"""Label quality without ground truth: a per-mask and per-image estimate from what a run already stores.

No file system, no model: plain functions on one image's :class:`~ovlabel.masks.MaskSet` (and, when a
second labeller of the same image exists, its label map). docs/quality.md documents every signal, the
calibration of the combination on synthetic scenes, and what that calibration does not show.

Signals, each in [0, 1] where 1 looks best, NaN/None where the run cannot say:

- ``margin``: CLIP's probability of the mask's class minus that of the best other class, over the whole
  vocabulary, from FMbSeg's mask feature (``MaskSet.margin``, stored by Stage 1.1 and 1.2; runs written
  before it fall back to ``MaskSet.topk``, whose probabilities cover the detected classes only), in
  [-1, 1], used as ``(margin + 1) / 2``: negative when CLIP prefers another class than the one the mask
  carries (e.g. one crop detection missed).
- ``pred_iou``: SAM's own estimate of the mask's IoU (``MaskSet.scores`` of SAM masks: Stage 1.1 and 1.2),
  clipped to [0, 1].
- ``stability``: SAM's stability score (``MaskSet.stability``): the IoU of the mask at logit thresholds
  ``±1``; a mask whose border moves when the threshold moves is unsure where the object ends.
- ``agreement``: where the run has two labellers of the same pixels (Stage 1.1 and 1.2 masks in one run),
  the share of a mask's pixels that the other labeller also labels and gives the same class.
- ``reference``: the same against another run's label map of the same image (a ``segment`` run of a
  checkpoint trained on this run, a salience run), when one is given.
- coverage: 1 - the share of the image's pixels that no mask covers (a label map with holes scores
  those pixels as wrong in every evaluation that has no "unlabeled" class).

A mask's estimate is the weighted mean of its available signals (:data:`WEIGHTS`, renormalised over
those it has); an image's is ``coverage x`` the weighted mean of its image-level signals, each the mean
of the per-mask signal over the labelled pixels, counted for the mask visible there
(:func:`image_quality`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ovlabel.masks import SOURCE_STAGE_1_1, SOURCE_STAGE_1_2, MaskSet

IGNORE = 255

#: Sources whose ``score`` is SAM's predicted IoU (others' scores mean other things: a CRF marginal, a
#: cosine similarity).
SAM_SOURCES = (SOURCE_STAGE_1_1, SOURCE_STAGE_1_2)

SIGNALS = ("margin", "pred_iou", "stability", "agreement", "reference")

#: Weights of the signals in the estimate. Fitted (non-negative least squares on the true per-image
#: mIoU, normalised to sum 1, rounded) on one seeded set of corrupted synthetic scenes and reported on
#: another: ``python benchmarks/quality.py`` refits and prints both (docs/quality.md).
WEIGHTS = {"margin": 0.51, "pred_iou": 0.0, "stability": 0.0, "agreement": 0.0, "reference": 0.49}


@dataclass
class ImageQuality:
    """One image's quality.

    Per mask (float32 ``(N,)`` aligned with the MaskSet, NaN = unknown): ``mask_margin`` (raw, in
    [-1, 1]), ``mask_agreement`` (with the run's other labeller), ``mask_reference`` (with the reference
    label map, if one was given), ``mask_quality``. Per image: :attr:`signals` (name -> float in [0, 1]
    or None: the visible-pixel-weighted means of the per-mask signals, see :func:`image_quality`),
    ``coverage`` (1 - ``unlabeled_fraction``), ``margin`` (the visible-pixel-weighted mean raw margin) and
    :attr:`quality`."""

    mask_margin: np.ndarray
    mask_agreement: np.ndarray
    mask_reference: np.ndarray
    mask_quality: np.ndarray
    signals: dict
    margin: float | None
    unlabeled_fraction: float
    quality: float | None

    def manifest_columns(self) -> dict:
        """The manifest's quality columns (``ovlabel.artifacts.MANIFEST_QUALITY_COLUMNS``) of this image."""
        s = self.signals
        return {"quality": self.quality, "margin": self.margin, "pred_iou": s["pred_iou"],
                "stability": s["stability"], "agreement": s["agreement"],
                "unlabeled_fraction": self.unlabeled_fraction}


def combine(signals: dict, weights: dict | None = None) -> float | None:
    """Weighted mean of the signals that are not None/NaN (``weights`` default :data:`WEIGHTS`); None when
    no signal with a positive weight is available."""
    weights = WEIGHTS if weights is None else weights
    num = den = 0.0
    for name, w in weights.items():
        v = signals.get(name)
        if v is None or not math.isfinite(v) or w <= 0:
            continue
        num += w * float(v)
        den += w
    return num / den if den > 0 else None


def mask_margins(ms: MaskSet) -> np.ndarray:
    """Per mask, probability of its class minus the best other class's: float32 ``(N,)`` in [-1, 1].

    ``ms.margin`` (over the whole vocabulary) where the stage stored it; else, for masks written before
    it existed, from ``ms.topk`` (over the image's detected classes; a class outside the stored top-k has
    a probability of at most the k-th's, so its margin is at most ``p_k - p_1``); NaN without either, or
    with a single candidate class."""
    out = np.array(ms.margin, np.float32, copy=True)
    for i, t in enumerate(ms.topk):
        if np.isfinite(out[i]) or t is None or len(t[0]) < 2:
            continue
        classes, probs = np.asarray(t[0]), np.asarray(t[1], np.float64)
        hit = np.flatnonzero(classes == ms.class_index[i])
        if len(hit):
            own = probs[hit[0]]
            other = np.max(np.delete(probs, hit[0]))
        else:
            own, other = probs[-1], probs[0]
        out[i] = own - other
    return out


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return None
    return float(np.sum(values[ok] * weights[ok]) / np.sum(weights[ok]))


def _agreement_with(dense: np.ndarray, classes: np.ndarray, other: np.ndarray, rows) -> tuple[np.ndarray, int, int]:
    """Per mask in ``rows``: the share of its pixels labelled in ``other`` (uint8 map) that carry its class;
    plus the summed agreeing and compared pixel counts."""
    out = np.full(len(dense), np.nan, np.float32)
    agree = total = 0
    for i in rows:
        seen = other[dense[i]]
        seen = seen[seen != IGNORE]
        if len(seen):
            same = int(np.count_nonzero(seen == classes[i]))
            out[i] = same / len(seen)
            agree += same
            total += len(seen)
    return out, agree, total


#: Pixel measures are taken on every s-th pixel, s chosen so the grid is at most this many pixels a side
#: (means over thousands of pixels; keeps the cost per image below a label-map paint at any image size).
GRID_SIDE = 256


def image_quality(
    ms: MaskSet, height: int, width: int, weights: dict | None = None, reference: np.ndarray | None = None,
) -> ImageQuality:
    """The quality of one image's final masks ``ms`` (all ``height x width``), from the masks alone, or
    also against ``reference``: another labeller's uint8 label map of the same image (same vocabulary,
    255 = unlabeled), e.g. a ``segment`` run's.

    Each pixel belongs to the mask painted on top (highest score, as the default paint policy; pixels no
    mask covers are unlabeled). A mask's quality is the weighted mean of its signals; the image's is
    ``coverage x`` the weighted mean of its image-level signals, each the mean of the per-mask signal
    over the labelled pixels (each pixel counted for the mask visible there), so a wrong mask weighs what
    it shows in the label map and an unlabeled pixel counts as wrong. Per-mask agreement compares each
    mask with the label map painted from the masks of the *other* sources only. Pixels are sampled on a
    regular grid of at most :data:`GRID_SIDE` a side (every s-th row and column); cost: one decode of
    every mask (dense bool ``(N, H, W)`` inside this call only) and a few passes over the sampled grid.
    """
    n = len(ms)
    margin = mask_margins(ms)
    nan = np.full(n, np.nan, np.float32)
    if n == 0:
        signals = dict.fromkeys(("margin", "pred_iou", "stability", "agreement", "reference"))
        return ImageQuality(nan, nan, nan, nan, signals, None, 1.0, 0.0)
    step = max(1, -(-max(height, width) // GRID_SIDE))
    dense = ms.decode(step)
    height, width = dense.shape[1:]
    order = ms.paint_order("score")
    visible_mask = np.full((height, width), -1, np.int64)
    for i in order:
        visible_mask[dense[i]] = i
    labelled = visible_mask >= 0
    visible = np.bincount(visible_mask[labelled], minlength=n).astype(np.float64)
    coverage = float(labelled.mean())
    sources = np.array(ms.source)
    agreement, agree_px, total_px = nan.copy(), 0, 0
    if len(set(ms.source)) > 1:
        for src in sorted(set(ms.source)):
            mine = sources == src
            others = np.full((height, width), IGNORE, np.uint8)
            for i in order[~mine[order]]:
                others[dense[i]] = ms.class_index[i]
            a, agree, total = _agreement_with(dense, ms.class_index, others, np.flatnonzero(mine))
            agreement[mine] = a[mine]
            agree_px += agree
            total_px += total
    ref = nan.copy()
    if reference is not None:
        if reference.shape != tuple(ms.rles[0]["size"]):
            raise ValueError(f"reference label map is {reference.shape}, the image {tuple(ms.rles[0]['size'])}")
        ref = _agreement_with(dense, ms.class_index, reference[::step, ::step], range(n))[0]
    is_sam = np.isin(sources, SAM_SOURCES)
    per_mask = {
        "margin": (margin + 1.0) / 2.0,
        "pred_iou": np.where(is_sam, np.clip(ms.scores, 0.0, 1.0), np.nan),
        "stability": np.where(is_sam, ms.stability, np.nan),
        "agreement": agreement,
        "reference": ref,
    }
    signals = {k: _weighted_mean(v, visible) for k, v in per_mask.items()}
    mask_quality = np.array([_none_nan(combine({k: v[i] for k, v in per_mask.items()}, weights)) for i in range(n)],
                            np.float32)
    combined = combine(signals, weights)
    raw = _weighted_mean(margin, visible)
    return ImageQuality(margin, agreement, ref, mask_quality, signals, raw, 1.0 - coverage,
                        coverage * (combined if combined is not None else 1.0))


def _none_nan(v: float | None) -> float:
    return float("nan") if v is None else v


def label_agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Agreement of two uint8 label maps ``(H, W)`` of the same image (255 = unlabeled; class indices
    in the same vocabulary): the share of the pixels both label on which they give the same class; None
    when they share no labelled pixel."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in size: {a.shape} and {b.shape}")
    both = (a != IGNORE) & (b != IGNORE)
    n = int(np.count_nonzero(both))
    return float(np.count_nonzero(a[both] == b[both]) / n) if n else None


def class_summary(categories, areas, qualities, image_ids, low: float = 0.5) -> dict:
    """Per-class summary of a run's masks for ``run.json``: ``{class name: {"masks", "images", "pixels",
    "mean_quality", "low_quality_masks"}}`` (pixels = summed mask areas; mean quality area-weighted over
    masks with a quality; low = quality below ``low``), classes in name order. Inputs are aligned
    sequences over all masks (quality NaN/None = unknown)."""
    cats = np.asarray(list(categories), dtype=object)
    area = np.asarray(list(areas), np.float64)
    q = np.array([np.nan if v is None else v for v in qualities], np.float64)
    ids = np.asarray(list(image_ids))
    out = {}
    for name in sorted(set(cats.tolist())):
        sel = cats == name
        mean = _weighted_mean(q[sel], area[sel])
        out[name] = {
            "masks": int(sel.sum()), "images": int(len(np.unique(ids[sel]))), "pixels": int(area[sel].sum()),
            "mean_quality": None if mean is None else round(mean, 6),
            "low_quality_masks": int(np.count_nonzero(q[sel] < low)),
        }
    return out


def least_certain(rows: list[dict], n: int) -> list[dict]:
    """The ``n`` manifest rows (ok images) with the lowest ``quality``, lowest first; rows without an
    estimate come after all estimated ones; ties by file name."""
    ok = [r for r in rows if r.get("status") == "ok"]
    ok.sort(key=lambda r: (r.get("quality") is None, r.get("quality") or 0.0, r["file"]))
    return ok[: max(0, n)]
