"""``MaskSet``: the one container that carries masks between stages and onto disk.

Masks are COCO run-length encodings (pycocotools' compressed RLE, ``{"size": [H, W], "counts": str}``);
dense masks exist only inside a batch (house rule 4). Boxes are ``xyxy`` in pixel-edge coordinates:
``(x1, y1)`` is the top-left corner of the first covered pixel and ``(x2, y2)`` the bottom-right corner
of the last, so COCO's ``xywh`` is ``(x1, y1, x2 - x1, y2 - y1)`` exactly. Only the COCO writer converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

#: Stage names recorded in the ``source`` column.
SOURCE_STAGE_1_1 = "stage1.1"
SOURCE_STAGE_1_2 = "stage1.2"


@dataclass
class MaskSet:
    """N masks of one image (all the same size), with per-mask metadata.

    - ``rles``: list of N COCO RLE dicts
    - ``class_index``: int32 ``(N,)``, index into the run's vocabulary (= label-map value)
    - ``scores``: float32 ``(N,)``, the stage's confidence (SAM's predicted IoU for Stage 1.1)
    - ``source``: list of N stage names
    - ``boxes``: float32 ``(N, 4)`` xyxy pixel edges; ``areas``: int64 ``(N,)`` pixel counts
    - ``points``: per mask, float32 ``(K, 2)`` (x, y) prompt points in pixels, or None
    - ``topk``: per mask, the classifier's best classes and their probabilities as
      ``(int32 (k,), float32 (k,))``, best first, or None (no classifier looked at the mask)
    - ``stability``: float32 ``(N,)``, SAM's stability score of each mask (the IoU of the mask logits
      thresholded at ``±offset``; segment-anything's ``calculate_stability_score``), NaN where unknown
      (masks not made by SAM, and parts written before ovlabel stored it)
    - ``margin``: float32 ``(N,)``, CLIP's vocabulary margin of each mask (probability of its class minus
      the best other class's over the whole vocabulary, FMbSeg's mask feature;
      :func:`ovlabel.stages.classify.vocabulary_margin`), NaN where unknown
    """

    rles: list[dict]
    class_index: np.ndarray
    scores: np.ndarray
    source: list[str]
    boxes: np.ndarray
    areas: np.ndarray
    points: list[np.ndarray | None] = field(default_factory=list)
    topk: list[tuple[np.ndarray, np.ndarray] | None] = field(default_factory=list)
    stability: np.ndarray | None = None
    margin: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.rles)
        self.class_index = np.asarray(self.class_index, dtype=np.int32).reshape(n)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(n, 4)
        self.areas = np.asarray(self.areas, dtype=np.int64).reshape(n)
        if not self.points:
            self.points = [None] * n
        if not self.topk:
            self.topk = [None] * n
        if self.stability is None:
            self.stability = np.full(n, np.nan, np.float32)
        self.stability = np.asarray(self.stability, dtype=np.float32).reshape(n)
        if self.margin is None:
            self.margin = np.full(n, np.nan, np.float32)
        self.margin = np.asarray(self.margin, dtype=np.float32).reshape(n)
        assert len(self.source) == n and len(self.points) == n == len(self.topk), "MaskSet fields disagree in length"

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def empty(cls) -> "MaskSet":
        return cls([], [], [], [], np.zeros((0, 4)), [])

    @classmethod
    def from_dense(cls, masks, class_index, scores, source: str, points=None, topk=None, stability=None) -> "MaskSet":
        """Encode dense masks (bool/uint8 array or tensor ``(N, H, W)``). Empty masks are dropped, with
        their metadata, since they have no box and label nothing."""
        m = masks.cpu().numpy() if hasattr(masks, "cpu") else np.asarray(masks)
        m = m.astype(bool, copy=False)
        keep = m.reshape(len(m), -1).any(axis=1) if len(m) else np.zeros(0, bool)
        m = m[keep]
        class_index = np.asarray(class_index)[keep]
        scores = np.asarray(scores)[keep]
        pts = [points[i] for i in np.flatnonzero(keep)] if points is not None else None
        tk = [topk[i] for i in np.flatnonzero(keep)] if topk is not None else None
        stab = np.asarray(stability, dtype=np.float32)[keep] if stability is not None else None
        if not len(m):
            return cls.empty()
        rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
        for r in rles:
            r["counts"] = r["counts"].decode("ascii")
        return cls.from_rles(list(rles), class_index, scores, [source] * len(rles), pts, tk, stab)

    @classmethod
    def from_rles(cls, rles, class_index, scores, source, points=None, topk=None, stability=None) -> "MaskSet":
        """Build from RLE dicts, computing boxes and areas with pycocotools."""
        if not rles:
            return cls.empty()
        enc = [_to_bytes_rle(r) for r in rles]
        xywh = mask_utils.toBbox(enc).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        areas = mask_utils.area(enc).astype(np.int64)
        return cls(list(rles), class_index, scores, list(source), boxes, areas, list(points or []), list(topk or []),
                   stability)

    def filter(self, keep) -> "MaskSet":
        """The subset selected by a boolean mask or an index array, in that order."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        return MaskSet(
            [self.rles[i] for i in idx], self.class_index[idx], self.scores[idx], [self.source[i] for i in idx],
            self.boxes[idx], self.areas[idx], [self.points[i] for i in idx], [self.topk[i] for i in idx],
            self.stability[idx], self.margin[idx],
        )

    @staticmethod
    def concat(sets: list["MaskSet"]) -> "MaskSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            return MaskSet.empty()
        return MaskSet(
            [r for s in sets for r in s.rles],
            np.concatenate([s.class_index for s in sets]),
            np.concatenate([s.scores for s in sets]),
            [x for s in sets for x in s.source],
            np.concatenate([s.boxes for s in sets]),
            np.concatenate([s.areas for s in sets]),
            [p for s in sets for p in s.points],
            [t for s in sets for t in s.topk],
            np.concatenate([s.stability for s in sets]),
            np.concatenate([s.margin for s in sets]),
        )

    def decode(self, step: int = 1) -> np.ndarray:
        """Dense bool masks ``(N, H, W)``; with ``step`` > 1 only every ``step``-th row and column
        (``(N, ceil(H / step), ceil(W / step))``)."""
        if not len(self):
            raise ValueError("cannot decode an empty MaskSet: its image size is unknown")
        dense = mask_utils.decode([_to_bytes_rle(r) for r in self.rles])
        return dense[::step, ::step].transpose(2, 0, 1).astype(bool)

    def paint_order(self, policy: str = "score") -> np.ndarray:
        """Indices in painting order (the last painted mask wins a pixel). Deterministic: ties keep the
        earlier mask on top.

        - ``score``: ascending score, so the most confident mask wins overlaps;
        - ``stage1.1-first``: every Stage 1.1 mask over every other mask, by score within each group;
        - ``small-on-top``: descending area, so a small mask stays visible on a large one around it.
        """
        first = -np.arange(len(self))
        if policy == "score":
            return np.lexsort((first, self.scores))
        if policy == "stage1.1-first":
            is_11 = np.array([s == SOURCE_STAGE_1_1 for s in self.source], dtype=np.int8)
            return np.lexsort((first, self.scores, is_11))
        if policy == "small-on-top":
            return np.lexsort((first, -self.areas))
        raise ValueError(f"unknown paint policy {policy!r}")

    def label_map(self, height: int, width: int, ignore: int = 255, policy: str = "score") -> np.ndarray:
        """Semantic label map uint8 ``(H, W)``: class index per pixel, ``ignore`` where no mask covers;
        overlaps resolved by :meth:`paint_order` ``policy``."""
        out = np.full((height, width), ignore, dtype=np.uint8)
        for i in self.paint_order(policy):
            out[mask_utils.decode(_to_bytes_rle(self.rles[i])).astype(bool)] = self.class_index[i]
        return out


def _to_bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
