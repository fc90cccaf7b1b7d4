"""``segment``: label new images with a trained alignment checkpoint and any class names (FMbSeg §3.3,
"Deployment").

Per image: frozen DINOv2 patch features at the checkpoint's resolution, the alignment module, cosine
similarity of every patch with the L2-normalised CLIP text feature of every class (checkpoint's
templates), similarities upsampled bilinearly to the full image ("we interpolate the similarities to the
original image dimension"), and each pixel takes its most similar class. With ``refine`` the class
probabilities ``softmax(similarity / temperature)`` (the training temperature) are refined by a dense CRF
first. :mod:`ovlabel.labelling.segment` runs it as a stage of the run engine (one mask per predicted class
per image, source ``segment``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.config import CRFConfig
from ovlabel.crf import dense_crf
from ovlabel.features import patch_grid
from ovlabel.masks import MaskSet

SOURCE_SEGMENT = "segment"

def upsampled_argmax(sim: torch.Tensor, height: int, width: int, budget: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel argmax of class similarities ``(C, rows, cols)`` upsampled bilinearly to ``(height,
    width)`` (``align_corners=False``, as ``F.interpolate``). Returns ``(labels int64 (H, W), best
    similarity float32 (H, W))``; ties keep the lower class index, as ``argmax`` does.

    Pruning, exact up to float rounding: a pixel's value is a convex combination of its 4 neighbouring
    patches, so class ``c`` can only win in the cell between 4 patch centres if its largest value there
    reaches the best smallest value of any class there. Only classes that can win somewhere are
    upsampled (few of a large vocabulary when one class clearly leads in each region; all of them when
    similarities are near-tied everywhere), a few at a time (at most ``budget`` floats per chunk) so
    memory stays flat.
    """
    sim = sim.float()
    pad = F.pad(sim[None], (1, 1, 1, 1), mode="replicate")  # each 2x2 window = one cell, edges clamped
    cmax = F.max_pool2d(pad, 2, stride=1)[0]  # (C, rows + 1, cols + 1)
    cmin = -F.max_pool2d(-pad, 2, stride=1)[0]
    can_win = (cmax >= cmin.max(dim=0, keepdim=True).values).flatten(1).any(dim=1)
    keep = torch.nonzero(can_win)[:, 0]  # ascending, so ties still go to the lower class index
    labels, best = _upsampled_argmax_dense(sim[keep], height, width, budget)
    return keep[labels], best


def _upsampled_argmax_dense(sim: torch.Tensor, height: int, width: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = sim.shape[0]
    chunk = max(1, budget // (height * width))
    best = labels = None
    for c0 in range(0, c, chunk):
        up = F.interpolate(sim[None, c0 : c0 + chunk], size=(height, width), mode="bilinear", align_corners=False)[0]
        val, idx = up.max(dim=0)
        if best is None:
            best, labels = val, idx
        else:
            better = val > best
            best = torch.where(better, val, best)
            labels = torch.where(better, idx + c0, labels)
    return labels, best


class AlignedSegmenter:
    """Encoder + alignment module + class text features -> label maps. ``text``: float32 ``(C, D)``
    L2-normalised on the module's device."""

    def __init__(self, encoder, module, text: torch.Tensor, config: dict, resolution: int, refine: bool, precision: str):
        self.encoder, self.module, self.text = encoder, module, text
        self.resolution = resolution
        self.max_aspect = float(config["max_aspect"])
        self.temperature = float(config["temperature"])
        self.refine = refine
        self.precision = precision
        self.device = text.device

    @torch.inference_mode()
    def similarities(self, image: np.ndarray) -> torch.Tensor:
        """Cosine similarity of each patch with each class: float32 ``(C, rows, cols)``."""
        from ovlabel.device import autocast

        h, w = image.shape[:2]
        grid = patch_grid(h, w, self.resolution, self.encoder.patch_size, self.max_aspect)
        feats = self.encoder.encode(self.encoder.prepare(image, grid)[None])  # (1, rows, cols, D)
        with autocast(self.device, self.precision):
            z = self.module(feats.reshape(1, grid[0] * grid[1], -1).to(self.device))[0]
        z = F.normalize(z.float(), dim=-1)
        return (self.text @ z.T).reshape(-1, *grid)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels uint8-able int64 (H, W), score float32 (C,))``: the class of every pixel, and per class
        the mean over its pixels of its similarity (CRF marginal with ``refine``); 0 for absent classes."""
        h, w = image.shape[:2]
        sim = self.similarities(image)
        c = sim.shape[0]
        if self.refine:
            up = F.interpolate(sim[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            probs = torch.softmax(up / self.temperature, dim=0).cpu().numpy()
            q = dense_crf(image, probs, CRFConfig())  # CutLER's defaults, as refine
            labels = q.argmax(axis=0)
            value = np.take_along_axis(q, labels[None], axis=0)[0]
        else:
            lab, best = upsampled_argmax(sim, h, w)
            labels, value = lab.cpu().numpy(), best.cpu().numpy()
        counts = np.bincount(labels.ravel(), minlength=c)
        sums = np.bincount(labels.ravel(), weights=value.ravel().astype(np.float64), minlength=c)
        return labels, (sums / np.maximum(counts, 1)).astype(np.float32)

    def process(self, images: list[np.ndarray], needs=None) -> list[SimpleNamespace]:
        """One result per image whose ``.masks`` is ``{"segment": MaskSet}``: one mask per predicted class
        (:class:`ovlabel.labelling.segment.SegmentWorker` makes them the stage's outputs)."""
        out = []
        for image in images:
            labels, score = self.predict(image)
            present = np.unique(labels)
            dense = labels[None] == present[:, None, None]
            ms = MaskSet.from_dense(dense, present, score[present], SOURCE_SEGMENT)
            out.append(SimpleNamespace(masks={SOURCE_SEGMENT: ms}))
        return out
