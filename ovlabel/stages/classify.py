"""Stage 1.2, part two: give each automatic mask a class among the classes Stage 1.1 found in the image.

Two classifiers and their ensemble, all restricted to the image's detected classes (seed 003 §3.2 "Mask
labelling": "compute its similarity to the text features of the detected categories in the image"), so a
mask can never take a class that crop detection did not find:

- **FMbSeg** (seed 003 §3.2): the mean of the dense CLIP feature map over the mask, compared with the class
  text features. The feature map is the one Stage 1.1 assembled from its crops: no extra CLIP pass.
- **OVSeg** (seed 002 §3.1, A.1): each mask's tight box is cropped from the image, the background inside the
  box is blanked ("crop with mask", A.1), the crop is resized to CLIP's input and classified with a
  prompt-template ensemble (A.2: the 14 ViLD templates). Blanked pixels take CLIP's mean colour, i.e. zero
  after normalisation (facebookresearch/ov-seg ``open_vocab_seg/modeling/clip_adapter/adapter.py``,
  ``mask_fill="mean"``). The box is stretched to CLIP's square input as OVSeg's code does
  (``F.interpolate(r, size=(224, 224))``); ``crop_shape="pad"`` centres it on a square of the fill colour
  first so the object keeps its aspect ratio. All crops of a batch of images share CLIP forward passes.
  This is OVSeg's *baseline* classifier: vanilla CLIP, without OVSeg's mask-adapted fine-tuning (§3.2-3.3).
- **Ensemble** (seed 002 §3.1, A.5): ``p^(1-λ) · p̂^λ`` with p the FMbSeg and p̂ the OVSeg probabilities,
  renormalised over the classes so the stored scores stay probabilities (the argmax is unchanged). In OVSeg,
  p is a trained MaskFormer's in-vocabulary classifier; here both terms come from the same frozen CLIP
  (dense-feature mean vs masked crop), so the ensemble mixes two frozen-CLIP scores.

Probabilities are ``softmax(scale · cos)`` over the detected classes, with CLIP's own logit scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.stages.detect import CropPlan

#: Masks are pooled onto the feature grid this many at a time (bounds memory on large images).
POOL_CHUNK = 8


def mask_coverage(masks: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """Fraction of each CLIP patch covered by each mask: float32 ``(N, gh, gw)``.

    ``masks``: bool ``(N, H, W)`` at the original resolution; the grid is Stage 1.1's (the image resized to
    ``plan.resized``, padded to ``plan.padded``, in ``plan.patch`` pixel patches). Padding patches get 0.
    """
    rh, rw = plan.resized
    pad = (0, plan.padded[1] - rw, 0, plan.padded[0] - rh)
    out = []
    for s in range(0, len(masks), POOL_CHUNK):
        m = masks[s : s + POOL_CHUNK, None].float()
        m = F.adaptive_avg_pool2d(m, (rh, rw)) if m.shape[-2:] != (rh, rw) else m
        out.append(F.avg_pool2d(F.pad(m, pad), plan.patch)[:, 0])
    if not out:
        return torch.zeros((0,) + plan.grid)
    return torch.cat(out)


def mean_features(coverage: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """FMbSeg's mask feature: the coverage-weighted mean of the feature map ``(gh, gw, D)`` over each
    mask, L2-normalised: ``(N, D)``. (Weighting by coverage is the mean over the mask's pixels of the
    feature map upsampled with nearest-neighbour patches.)"""
    w = coverage.flatten(1).to(feature_map.device)
    feats = w @ feature_map.reshape(-1, feature_map.shape[-1]) / w.sum(dim=1, keepdim=True).clamp(min=1e-6)
    return F.normalize(feats, dim=-1)


def class_probabilities(features: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale · features @ text.T)``: ``(N, D)`` x ``(P, D)`` -> float32 ``(N, P)``."""
    return torch.softmax(scale * features.float() @ text.float().T, dim=-1)


def ensemble(p: torch.Tensor, p_hat: torch.Tensor, lam: float) -> torch.Tensor:
    """OVSeg's geometric ensemble ``p^(1-λ) · p̂^λ`` (seed 002 §3.1), renormalised per row."""
    q = p.clamp(min=1e-12) ** (1.0 - lam) * p_hat.clamp(min=1e-12) ** lam
    return q / q.sum(dim=-1, keepdim=True)


def masked_crops(
    image: np.ndarray, masks: torch.Tensor, boxes: np.ndarray, size: int, fill, shape: str = "stretch"
) -> np.ndarray:
    """OVSeg's "crop with mask" inputs: uint8 ``(N, S, S, 3)``.

    ``image``: RGB uint8 ``(H, W, 3)``; ``masks``: bool ``(N, H, W)``; ``boxes``: float ``(N, 4)`` xyxy
    pixel edges (tight boxes); ``fill``: the RGB colour of blanked pixels. Each box is cut out and pixels
    outside the mask take ``fill``; ``shape="stretch"`` resizes the crop to ``size x size`` (bicubic; the
    aspect ratio is not kept, as OVSeg's code), ``"pad"`` first centres it on a ``fill`` square.
    """
    from PIL import Image

    fill = np.asarray(fill, dtype=np.uint8)
    out = np.empty((len(masks), size, size, 3), dtype=np.uint8)
    m_np = masks.numpy()
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).round().astype(int)):
        crop = image[y1:y2, x1:x2].copy()
        crop[~m_np[i, y1:y2, x1:x2]] = fill
        if shape == "pad":
            h, w = crop.shape[:2]
            side = max(h, w)
            square = np.empty((side, side, 3), dtype=np.uint8)
            square[:] = fill
            oy, ox = (side - h) // 2, (side - w) // 2
            square[oy : oy + h, ox : ox + w] = crop
            crop = square
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    return out


def topk(probs: torch.Tensor, classes: np.ndarray, k: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Best class per row of ``probs`` ``(N, P)`` (columns = vocabulary indices ``classes``) and each
    row's top ``k`` as ``(class indices int32, probabilities float32)``. Ties go to the lower column."""
    k = min(k, probs.shape[1])
    vals, idx = probs.cpu().sort(dim=1, descending=True, stable=True)
    idx_np, vals_np = idx[:, :k].numpy(), vals[:, :k].numpy().astype(np.float32)
    cls = np.asarray(classes, dtype=np.int32)
    return cls[idx_np[:, 0]], [(cls[i], v) for i, v in zip(idx_np, vals_np)]


def vocabulary_margin(probs: torch.Tensor, class_index) -> np.ndarray:
    """Per mask, the probability of its class minus that of the best other class, over the whole
    vocabulary: ``probs`` float ``(N, C)`` (:func:`class_probabilities` against every class's text),
    ``class_index`` int ``(N,)`` -> float32 ``(N,)`` in [-1, 1]. Negative when CLIP prefers another class
    than the mask's, including one crop detection did not find in the image (which the decision, made
    among the detected classes, cannot see). A label-quality signal (ovlabel.quality), not a decision."""
    p = probs.float().cpu()
    idx = torch.as_tensor(np.asarray(class_index, dtype=np.int64))
    own = p[torch.arange(len(p)), idx]
    if p.shape[1] < 2:
        return np.full(len(p), np.nan, np.float32)
    other = p.scatter(1, idx[:, None], float("-inf")).max(dim=1).values
    return (own - other).numpy().astype(np.float32)


def mask_crops(masks: torch.Tensor, boxes: np.ndarray, size: int, shape: str = "stretch") -> np.ndarray:
    """The masks laid out exactly as :func:`ovlabel.stages.classify.masked_crops` lays out their crops
    (with the same ``shape``): bool ``(N, size, size)`` (a mask pixel is one the resize left at least half
    on). ``masks``: bool ``(N, H, W)``; ``boxes``: ``(N, 4)`` xyxy pixel edges."""
    h, w = masks.shape[1:]
    white = np.full((h, w, 3), 255, np.uint8)
    return masked_crops(white, masks, boxes, size, (0, 0, 0), shape)[..., 0] >= 128
