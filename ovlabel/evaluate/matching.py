"""Matching prediction classes to ground-truth classes by name, and prediction files to ground-truth files.

Class names are compared after normalisation (lower case, everything but letters and digits removed, so
``potted plant``, ``pottedplant`` and ``Potted-Plant`` agree), over every synonym on both sides: a
prediction class matches the ground-truth class that shares any synonym with it. A prediction class
matching two ground-truth classes is an error (the class list is ambiguous); one matching none is reported
and its pixels count as wrong predictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovlabel.errors import OvlabelError

UNLABELED = 255


def norm_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", name.lower())


@dataclass(frozen=True)
class ClassList:
    """Ordered classes (position = label value), each with its synonyms (the name first)."""

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_vocabulary(cls, vocab) -> "ClassList":
        return cls(tuple(vocab.names), tuple(tuple(c.synonyms) for c in vocab.classes), vocab.source)

    @classmethod
    def from_json(cls, doc: dict) -> "ClassList":
        """From a run's ``settings.vocabulary`` (``{"source", "classes", "synonyms"}``)."""
        names = tuple(doc["classes"])
        syn = doc.get("synonyms") or {}
        return cls(names, tuple(tuple(syn.get(n, [n])) for n in names), doc.get("source", "run"))

    def index_of(self, name: str) -> int | None:
        key = norm_name(name)
        for i, syns in enumerate(self.synonyms):
            if any(norm_name(s) == key for s in syns):
                return i
        return None


@dataclass(frozen=True)
class ClassMatch:
    """``pred_to_gt[i]``: the ground-truth index of prediction class ``i`` or None; the unmatched names."""

    pred_to_gt: tuple[int | None, ...]
    unmatched_pred: tuple[str, ...]
    unmatched_gt: tuple[str, ...]
    identity: bool

    def lut(self, num_gt: int, unlabeled_as: int | None) -> np.ndarray:
        """uint8 (256,) prediction value -> ground-truth index; ``num_gt`` (= "no ground-truth class") for
        unmatched classes and values outside the prediction's class list; 255 (unlabeled) -> ``unlabeled_as``
        or ``num_gt``."""
        lut = np.full(256, num_gt, np.uint8)
        for i, g in enumerate(self.pred_to_gt):
            if g is not None:
                lut[i] = g
        lut[UNLABELED] = num_gt if unlabeled_as is None else unlabeled_as
        return lut


def match_classes(pred: ClassList | None, gt: ClassList) -> ClassMatch:
    """Match ``pred`` to ``gt`` by normalised synonyms; ``pred=None`` means the prediction uses the ground
    truth's indices (a PNG folder without a class list)."""
    if pred is None:
        return ClassMatch(tuple(range(len(gt))), (), (), True)
    owner: dict[str, int] = {}
    for gi, syns in enumerate(gt.synonyms):
        for s in syns:
            key = norm_name(s)
            if key in owner and owner[key] != gi:
                raise OvlabelError(
                    f"ground-truth classes '{gt.names[owner[key]]}' and '{gt.names[gi]}' share the name '{s}' "
                    f"({gt.source}); names must identify one class"
                )
            owner[key] = gi
    pred_to_gt = []
    for pi, syns in enumerate(pred.synonyms):
        hits = sorted({owner[norm_name(s)] for s in syns if norm_name(s) in owner})
        if len(hits) > 1:
            raise OvlabelError(
                f"prediction class '{pred.names[pi]}' matches several ground-truth classes "
                f"({', '.join(gt.names[h] for h in hits)}); give a class list whose synonyms pick one"
            )
        pred_to_gt.append(hits[0] if hits else None)
    matched = {g for g in pred_to_gt if g is not None}
    return ClassMatch(
        tuple(pred_to_gt),
        tuple(n for n, g in zip(pred.names, pred_to_gt) if g is None),
        tuple(n for i, n in enumerate(gt.names) if i not in matched),
        identity=pred_to_gt == list(range(len(gt))) and len(pred) == len(gt),
    )


def pair_files(gt: dict[str, Path], pred: dict[str, Path]):
    """Pair ground-truth and prediction files by key (relative path without suffix); keys left unpaired
    are then paired by file name alone where that name is unique on both sides.

    Returns ``(pairs [(key, gt_path, pred_path)] sorted by key, missing [gt keys without prediction],
    extra [prediction keys without ground truth])``.
    """
    pairs = {k: (gt[k], pred[k]) for k in gt.keys() & pred.keys()}
    rest_gt = {k: v for k, v in gt.items() if k not in pairs}
    rest_pred = {k: v for k, v in pred.items() if k not in pairs}
    if rest_gt and rest_pred:
        by_name_gt, by_name_pred = _unique_names(rest_gt), _unique_names(rest_pred)
        for name in by_name_gt.keys() & by_name_pred.keys():
            gk, pk = by_name_gt[name], by_name_pred[name]
            pairs[gk] = (rest_gt.pop(gk), rest_pred.pop(pk))
    return ([(k, *pairs[k]) for k in sorted(pairs)], sorted(rest_gt), sorted(rest_pred))


def _unique_names(files: dict[str, Path]) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for k in files:
        seen.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    return {name: ks[0] for name, ks in seen.items() if len(ks) == 1}
