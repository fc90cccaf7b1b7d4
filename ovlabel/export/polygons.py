"""Binary mask -> one polygon, the way Ultralytics YOLO-seg labels hold an instance.

A YOLO-seg label line is one instance: ``class x1 y1 x2 y2 ...``, one polygon, which Ultralytics fills with
``cv2.fillPoly`` when it loads the dataset (``ultralytics/data/utils.py``, ``polygon2mask``). Masks have
holes and several parts, so:

- Holes: each hole contour is spliced into its outer contour along a zero-width seam that stays on
  foreground pixels (supervision's ``approximate_mask_with_polygons(..., bridge_holes=True)`` in
  ``supervision/dataset/utils.py``, the routine supervision's own YOLO and VOC writers use). The seam is
  walked out and back, so the filled polygon keeps the hole under both even-odd and non-zero filling.
- Parts: the connected components are joined into one polygon by Ultralytics' rule for multi-part
  instances (``merge_multi_segment`` in ``ultralytics/data/converter.py``, used by ``convert_coco`` for
  multi-polygon COCO instances and by ``ops.masks2segments(strategy="all")`` for predicted masks): each part
  is connected to the next at their closest pair of vertices by a thin line walked there and back.
  Ultralytics itself is not imported (it imports torch); the rule is re-stated here: consecutive parts,
  closest vertex pair, out-and-back connection. Rasterised, the connecting lines add a one-pixel path
  between parts, as in Ultralytics' own converted datasets.

Contours come from OpenCV's ``findContours`` (through supervision), as pixel indices of boundary pixels.
"""

from __future__ import annotations

import numpy as np


def mask_to_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One polygon for the bool ``(H, W)`` mask: float64 ``(K, 2)`` vertices as (x, y) pixel indices
    (holes bridged, parts joined; see the module docstring), or None when no contour of 3+ points exists
    (a mask of one or two pixels)."""
    parts = mask_parts(mask)
    if not parts:
        return None
    poly = join_parts(parts)
    return poly if len(poly) >= 3 else None


def mask_parts(mask: np.ndarray) -> list[np.ndarray]:
    """One polygon per connected component of the bool ``(H, W)`` mask, holes bridged into it (int
    ``(K, 2)`` (x, y) pixel indices). Where supervision finds no seam on foreground for a hole, that
    component falls back to its outer contour (the hole is filled, as Ultralytics' ``masks2segments`` does
    for every mask)."""
    from supervision.dataset.utils import approximate_mask_with_polygons

    m = np.ascontiguousarray(mask, dtype=bool)
    try:
        return [np.asarray(p) for p in approximate_mask_with_polygons(m, bridge_holes=True)]
    except ValueError:
        import cv2

        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def join_parts(parts: list[np.ndarray]) -> np.ndarray:
    """Join polygons (each ``(K_i, 2)``) into one, Ultralytics' way: part i-1 and part i are connected at
    their closest pair of vertices (Euclidean; ties: the first in vertex order), and the tour walks into
    each part there, around it, and back along the same connection. One part is returned unchanged."""
    from scipy.spatial import cKDTree

    parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in parts]
    n = len(parts)
    if n == 1:
        return parts[0]
    exits, entries = [0] * n, [0] * n
    for i in range(1, n):
        dist, nearest = cKDTree(parts[i]).query(parts[i - 1])
        a = int(np.argmin(dist))  # first vertex of part i-1 at the minimal distance
        exits[i - 1], entries[i] = a, int(nearest[a])
    tail = None
    for i in reversed(range(n)):
        start = entries[i] if i else exits[0]
        ring = np.roll(parts[i], -start, axis=0)
        if i:
            ring = np.concatenate([ring, ring[:1]])  # a connected part returns to where it was entered
        if tail is not None:
            k = (exits[i] - start) % len(parts[i])
            ring = np.concatenate([ring[: k + 1], tail, ring[k : k + 1], ring[k + 1 :]])
        tail = ring
    return tail
