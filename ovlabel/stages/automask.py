"""Stage 1.2, part one: SAM's automatic masks, generated from an image embedding that already exists.

FMbSeg (seed 003 §3.2, "Automatic mask generation") runs segment-anything's automatic mask generator
on the full image and keeps masks by size and predicted IoU. ``SamAutomaticMaskGenerator`` computes its
own image embedding (``SamPredictor.set_image``); here the embedding Stage 1.1 computed is reused, so the
image encoder runs once per image for both stages.

The steps are the generator's (one crop layer, the whole image): a regular grid of single-point prompts,
three masks per point, filtered by predicted IoU and stability score, duplicates removed by box NMS,
optionally holes and islands cleaned. Two things differ, both for speed on the mask decoder's output
(DESIGN: the decoder dominates automatic generation): the IoU and stability filters, the boxes and the
NMS work on the decoder's low-resolution logits (256² for the 1024 px encoder frame), and only the
survivors are upsampled to the image, where the area bounds are applied exactly. Stability computed at
low resolution is the same ratio of areas measured on a 4× coarser grid. The decoder itself computes mask
pixels only for the outputs whose predicted IoU passes (``decode_filtered``, see
:mod:`ovlabel.models.sam_decoder`), with the same numbers as the unfiltered decoder.

``skip_covered`` (off by default) prompts the grid in two passes, skipping points inside confident masks
of the first (TinySAM's hierarchical strategy; :func:`sparse_subgrid`, :func:`covered_points`,
docs/stage1.2.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ovlabel.config import AutoMaskConfig

#: Survivors are upsampled to full resolution this many at a time (bounds memory on large images).
UPSCALE_CHUNK = 16


@dataclass
class AutoMasks:
    """Automatic masks of one image: ``masks`` bool ``(N, H, W)`` (CPU, original resolution),
    ``pred_iou`` and ``stability`` float32 ``(N,)``; sorted by predicted IoU, best first."""

    masks: torch.Tensor
    pred_iou: torch.Tensor
    stability: torch.Tensor

    def __len__(self) -> int:
        return len(self.pred_iou)


def point_grid(points_per_side: int, height: int, width: int) -> torch.Tensor:
    """The generator's prompt grid: float32 ``(n², 2)`` (x, y) pixel coordinates of the centres of an
    ``n x n`` tiling of the image (segment-anything's ``build_point_grid``, scaled to the image)."""
    from segment_anything.utils.amg import build_point_grid

    grid = build_point_grid(points_per_side) * np.array([[width, height]], dtype=np.float64)
    return torch.from_numpy(grid.astype(np.float32))


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks ``logits > threshold + offset`` and ``logits > threshold - offset``
    (segment-anything's ``calculate_stability_score``). ``logits`` ``(N, h, w)`` -> ``(N,)``."""
    from segment_anything.utils.amg import calculate_stability_score

    return calculate_stability_score(logits, threshold, offset)


def _boxes(masks: torch.Tensor, sy: float, sx: float) -> torch.Tensor:
    """xyxy pixel-edge boxes ``(N, 4)`` in original pixels of bool low-res masks ``(N, h, w)``."""
    from segment_anything.utils.amg import batched_mask_to_box

    b = batched_mask_to_box(masks).float()  # inclusive max indices
    b[:, 2:] += 1
    return b * torch.tensor([sx, sy, sx, sy], device=b.device)


def generate(sam, emb, cfg: AutoMaskConfig) -> AutoMasks:
    """Automatic masks of the image ``emb`` was computed from (see the module docstring).

    ``sam``: a :class:`~ovlabel.models.sam.SamModel` (or an object with ``decode_filtered``,
    ``low_res_geometry``, ``upscale``, ``mask_threshold`` and ``stats``); ``emb``: its embedding of the
    image. With ``cfg.skip_covered`` the grid is prompted in two passes (:func:`covered_points`).
    """
    from torchvision.ops import nms

    h, w = emb.original_size
    points = point_grid(cfg.points_per_side, h, w)
    if cfg.skip_covered:
        first, rest = sparse_subgrid(cfg.points_per_side, cfg.skip_stride)
        found = _candidates(sam, emb, points[first], cfg)
        covered = covered_points(found.cover, points[rest], sam.low_res_geometry(emb))
        sam.stats["sam_prompts_skipped"] += int(covered.sum())
        found.extend(_candidates(sam, emb, points[rest][~covered], cfg))
    else:
        found = _candidates(sam, emb, points, cfg)
    if not found.logits:
        return _empty(h, w)
    logits, ious, stabs, boxes = (torch.cat(x) for x in (found.logits, found.ious, found.stabs, found.boxes))
    order = nms(boxes, ious, cfg.box_nms_thresh)  # sorted by predicted IoU, best first
    masks = _upscale(sam, emb, logits[order])
    ious, stabs = ious[order].cpu(), stabs[order].cpu()
    area = masks.flatten(1).sum(dim=1).float() / float(h * w)
    keep = (area > 0) & (area >= cfg.min_area) & (area <= cfg.max_area)
    masks, ious, stabs = masks[keep], ious[keep], stabs[keep]
    if cfg.min_region_area > 0 and len(masks):
        masks, keep = clean_regions(masks, cfg.min_region_area, cfg.box_nms_thresh)
        masks, ious, stabs = masks[keep], ious[keep], stabs[keep]
    return AutoMasks(masks, ious.float(), stabs.float())


@dataclass
class _Found:
    """Candidate masks that passed the IoU, stability and non-empty filters, per decoder batch: low-res
    logits ``(n, 4h, 4w)``, IoUs, stability scores, xyxy boxes; ``cover``: bool ``(vh, vw)`` union of their
    pixels with logits above ``skip_logit_thresh`` (only with ``skip_covered``)."""

    logits: list = field(default_factory=list)
    ious: list = field(default_factory=list)
    stabs: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    cover: torch.Tensor | None = None

    def extend(self, other: _Found) -> None:
        for name in ("logits", "ious", "stabs", "boxes"):
            getattr(self, name).extend(getattr(other, name))


def _candidates(sam, emb, points: torch.Tensor, cfg: AutoMaskConfig) -> _Found:
    """Prompt SAM with ``points`` ``(n, 2)`` (x, y) pixels, ``points_per_batch`` at a time, and filter."""
    vh, vw, sy, sx = sam.low_res_geometry(emb)
    thr = sam.mask_threshold
    found = _Found()
    for start in range(0, len(points), cfg.points_per_batch):
        pts = points[start : start + cfg.points_per_batch, None, :]
        keep, low, iou = sam.decode_filtered(
            emb, pts, torch.ones(pts.shape[:2], dtype=torch.int64), cfg.pred_iou_thresh, multimask=True
        )
        iou = iou[keep]  # mask pixels exist only for these (SamModel.decode_filtered)
        stab = stability_score(low[:, :vh, :vw], thr, cfg.stability_score_offset)  # on the image only
        keep = stab >= cfg.stability_score_thresh
        low, iou, stab = low[keep], iou[keep], stab[keep]
        binary = low[:, :vh, :vw] > thr
        keep = binary.flatten(1).any(dim=1)
        if keep.any():
            found.logits.append(low[keep])
            found.ious.append(iou[keep])
            found.stabs.append(stab[keep])
            found.boxes.append(_boxes(binary[keep], sy, sx))
            if cfg.skip_covered:
                sure = (low[keep][:, :vh, :vw] > cfg.skip_logit_thresh).any(dim=0)
                found.cover = sure if found.cover is None else found.cover | sure
    return found


def sparse_subgrid(points_per_side: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the ``n x n`` grid (row-major indices, as :func:`point_grid`) into the sparse first pass,
    every ``stride``-th point per side starting at ``stride // 2`` (the points nearest the centres of an
    ``n/stride`` grid), and the rest. Returns two int64 index tensors, each ascending."""
    n = points_per_side
    idx = torch.arange(n * n).view(n, n)
    off = min(stride // 2, n - 1)
    first = idx[off::stride, off::stride].flatten()
    rest = torch.ones(n * n, dtype=torch.bool)
    rest[first] = False
    return first, torch.nonzero(rest).flatten()


def covered_points(cover: torch.Tensor | None, points: torch.Tensor, geometry: tuple) -> torch.Tensor:
    """bool ``(n,)``: which ``points`` ``(n, 2)`` (x, y original pixels) fall on a ``True`` pixel of the
    low-resolution ``cover`` ``(vh, vw)`` (None: nothing covered); ``geometry`` is
    ``SamModel.low_res_geometry``'s ``(vh, vw, sy, sx)``."""
    if cover is None or not len(points):
        return torch.zeros(len(points), dtype=torch.bool)
    vh, vw, sy, sx = geometry
    cols = (points[:, 0] / sx).long().clamp(0, vw - 1)
    rows = (points[:, 1] / sy).long().clamp(0, vh - 1)
    return cover.cpu()[rows, cols]


def _empty(h: int, w: int) -> AutoMasks:
    return AutoMasks(torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0), torch.zeros(0))


def _upscale(sam, emb, logits: torch.Tensor) -> torch.Tensor:
    """Bool masks ``(N, H, W)`` on the CPU from low-res logits ``(N, 4h, 4w)``, exactly as
    ``SamPredictor`` would upsample them."""
    out = [sam.upscale(emb, logits[s : s + UPSCALE_CHUNK, None]).cpu() for s in range(0, len(logits), UPSCALE_CHUNK)]
    return torch.cat(out)


def clean_regions(masks: torch.Tensor, min_area: int, nms_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill holes and remove islands smaller than ``min_area`` pixels in each mask, then drop the
    duplicates this creates, preferring masks that did not change (segment-anything's
    ``postprocess_small_regions``). Returns the cleaned masks and the kept indices into the input."""
    from scipy import ndimage
    from torchvision.ops import nms

    cleaned, unchanged = [], []
    for m in masks.numpy():
        out = m.copy()
        for fill, region in ((True, ~out), (False, out)):  # holes, then islands
            lab, n = ndimage.label(region)
            if n:
                sizes = np.bincount(lab.ravel())[1:]
                small = np.flatnonzero(sizes < min_area) + 1
                if len(small):
                    out[np.isin(lab, small)] = fill
        cleaned.append(out)
        unchanged.append(float(np.array_equal(out, m)))
    cleaned_t = torch.from_numpy(np.stack(cleaned))
    nonempty = cleaned_t.flatten(1).any(dim=1)
    idx = torch.nonzero(nonempty).flatten()
    if not len(idx):
        return cleaned_t[:0], idx
    from segment_anything.utils.amg import batched_mask_to_box

    boxes = batched_mask_to_box(cleaned_t[idx]).float()
    keep = nms(boxes, torch.tensor(unchanged)[idx], nms_thresh)
    keep = idx[keep.sort().values]  # keep the predicted-IoU order
    return cleaned_t[keep], keep
