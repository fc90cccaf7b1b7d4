"""mIoU, mAcc and aAcc with mmsegmentation's ``IoUMetric`` semantics, accumulated in one confusion matrix.

mmsegmentation (``mmseg/evaluation/metrics/iou_metric.py``) computes, per image, over the pixels whose
ground truth is not ``ignore_index``: the intersection, prediction and label histograms of the values in
``[0, K-1]`` (``torch.histc``: values outside that range fall in no bin), sums them over the whole dataset,
and only then divides: ``IoU = intersect / union``, ``Acc = intersect / label``, ``aAcc = sum(intersect) /
sum(label)``, with ``0/0 = NaN`` for a class absent from both prediction and ground truth; ``mIoU`` and
``mAcc`` are ``nanmean`` over the classes. The dataset is never averaged image by image.

Here one ``(K+1) x (K+1)`` int64 confusion matrix holds the same information: rows are ground-truth values
(row ``K`` gathers ground-truth values >= K that are not ignored), columns are predicted values (column
``K`` gathers predictions outside the class list: unlabeled pixels, unmatched classes). Then
``intersect = diag[:K]``, ``label = rows[:K].sum``, ``pred = cols[:K].sum`` (row ``K`` included, as
mmseg's histogram of predictions includes those pixels), ``union = pred + label - intersect``. Memory is
constant however many images are scored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Per-class ``iou``, ``acc`` float64 ``(K,)`` (NaN where undefined) and the dataset-level summaries, all
    as fractions in [0, 1] (multiply by 100 for the percentages papers print). Areas are pixel counts."""

    iou: np.ndarray
    acc: np.ndarray
    intersect: np.ndarray
    union: np.ndarray
    pred_area: np.ndarray
    label_area: np.ndarray
    aacc: float
    miou: float
    macc: float


class ConfusionMatrix:
    """Dataset-level accumulator for ``num_classes`` classes (see the module docstring for the layout)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` and ``gt`` integer arrays of the same shape, already in the ground truth's
        index space (class ``i`` = value ``i``). Ground-truth pixels equal to ``ignore_index`` are skipped."""
        self.counts += image_counts(pred, gt, self.num_classes, self.ignore_index)

    def merge(self, other: "ConfusionMatrix") -> None:
        assert other.counts.shape == self.counts.shape
        self.counts += other.counts

    def scores(self) -> Scores:
        """IoU, Acc, aAcc, mIoU, mAcc exactly as mmseg's ``IoUMetric.total_area_to_metrics``."""
        k = self.num_classes
        c = self.counts
        intersect = np.diag(c)[:k].astype(np.float64)
        label = c[:k].sum(axis=1).astype(np.float64)
        pred = c[:, :k].sum(axis=0).astype(np.float64)
        union = pred + label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            acc = intersect / label
            aacc = float(intersect.sum() / label.sum()) if label.sum() else float("nan")
        return Scores(iou, acc, intersect, union, pred, label, aacc, _nanmean(iou), _nanmean(acc))


def image_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The ``(K+1, K+1)`` confusion counts of one image (see :class:`ConfusionMatrix`)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    k1 = num_classes + 1
    valid = gt != ignore_index
    g = np.minimum(gt[valid], num_classes).astype(np.int32)
    p = np.minimum(pred[valid], num_classes).astype(np.int32)
    return np.bincount(g * k1 + p, minlength=k1 * k1).reshape(k1, k1).astype(np.int64)


def image_miou(counts: np.ndarray, k: int, empty: float = float("nan")) -> float:
    """mIoU of one image's ``(k+1, k+1)`` counts (rows ground truth, columns prediction, the last row and
    column outside the k classes): the mean IoU over the classes with a non-empty union; ``empty`` if
    none has one."""
    inter = np.diag(counts)[:k].astype(np.float64)
    union = counts[:k].sum(1) + counts[:, :k].sum(0) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else empty


def _nanmean(x: np.ndarray) -> float:
    if np.isnan(x).all():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x))
