"""Frozen-encoder patch features: the patch grid of an image, and the on-disk fp16 feature cache.

Stage 2 (FMbSeg §3.3) keeps the vision encoder frozen, so an image's patch features never change: they
are computed once and stored as fp16 ``.npy`` files keyed on the image's content hash, the encoder's
identity (model string, weight digest, precision) and the patch grid the image was resized to. Epochs
after the first read them back instead of running the encoder.

Geometry: an ``(H, W)`` image is resized, keeping its aspect ratio, so that its short side is about
``resolution`` pixels; both sides are rounded to whole patches (at least one), and the long side is
capped at ``max_aspect * resolution``. Patch ``(r, c)`` of the ``(rows, cols)`` grid covers image rows
``[r * H / rows, (r + 1) * H / rows)`` and columns ``[c * W / cols, (c + 1) * W / cols)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ovlabel.io.atomic import atomic_path


def patch_grid(height: int, width: int, resolution: int, patch: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid for an image of ``height`` x ``width`` pixels (see module doc)."""
    scale = resolution / min(height, width)
    cap = max(1, round(max_aspect * resolution / patch))
    rows = min(cap, max(1, round(height * scale / patch)))
    cols = min(cap, max(1, round(width * scale / patch)))
    return rows, cols


class FeatureCache:
    """fp16 patch features on disk, one ``.npy`` per (encoder, grid, image); ``root=None`` disables it.

    Layout: ``ROOT/<sha256(encoder key)[:24]>/<rows>x<cols>/<image sha256[:2]>/<image sha256>.npy``, each
    an fp16 array ``(rows, cols, D)``. Files are written atomically; a corrupt or mismatched file reads as
    missing and is recomputed.
    """

    def __init__(self, root: str | Path | None, encoder_key: str):
        self.root = Path(root).expanduser() if root is not None else None
        self.encoder_key = encoder_key
        self._dir = None
        if self.root is not None:
            self._dir = self.root / hashlib.sha256(encoder_key.encode()).hexdigest()[:24]
        self.hits = 0
        self.misses = 0

    def path(self, sha256: str, grid: tuple[int, int]) -> Path | None:
        if self._dir is None:
            return None
        return self._dir / f"{grid[0]}x{grid[1]}" / sha256[:2] / f"{sha256}.npy"

    def load(self, sha256: str, grid: tuple[int, int]) -> np.ndarray | None:
        """The cached fp16 ``(rows, cols, D)`` features, or None."""
        path = self.path(sha256, grid)
        if path is None or not path.is_file():
            self.misses += 1
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            arr = None
        if arr is None or arr.dtype != np.float16 or arr.ndim != 3 or tuple(arr.shape[:2]) != tuple(grid):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def save(self, sha256: str, grid: tuple[int, int], features: np.ndarray) -> None:
        path = self.path(sha256, grid)
        if path is None:
            return
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(features, dtype=np.float16), allow_pickle=False)

    def describe(self) -> dict:
        return {"root": str(self.root) if self.root else None, "encoder_key": self.encoder_key}


def default_feature_root() -> Path:
    """``<ovlabel cache>/features`` (see :mod:`ovlabel.cache`)."""
    from ovlabel.cache import cache_dir

    return cache_dir() / "features"


def extract_features(encoder, images: list[np.ndarray], grids: list[tuple[int, int]], batch_size: int = 8) -> list:
    """Encode RGB uint8 images at their grids, batching images that share a grid. Returns, in input
    order, float32 ``(rows, cols, D)`` tensors on the encoder's device."""
    import torch

    out: list = [None] * len(images)
    by_grid: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grids):
        by_grid.setdefault(tuple(g), []).append(i)
    for grid, idx in by_grid.items():
        for a in range(0, len(idx), batch_size):
            chunk = idx[a : a + batch_size]
            batch = torch.stack([encoder.prepare(images[i], grid) for i in chunk])
            feats = encoder.encode(batch)
            for i, f in zip(chunk, feats):
                out[i] = f
    return out


def pad_batch(feats: list, device) -> tuple:
    """Patch features of several images (each float ``(rows, cols, D)``) as one zero-padded batch
    ``(B, N_max, D)`` on ``device`` and its mask of real tokens, bool ``(B, N_max)`` (both heads of Stage 2
    train on it)."""
    import torch

    n_max = max(f.shape[0] * f.shape[1] for f in feats)
    x = torch.zeros(len(feats), n_max, feats[0].shape[-1], device=device)
    valid = torch.zeros(len(feats), n_max, dtype=torch.bool, device=device)
    for i, f in enumerate(feats):
        n = f.shape[0] * f.shape[1]
        x[i, :n] = f.reshape(n, -1)
        valid[i, :n] = True
    return x, valid
