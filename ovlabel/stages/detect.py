"""Stage 1.1 of FMbSeg (seed 003 §3.2, "Querying SAM with CLIP").

1. *High-resolution feature extraction*: the image is over-sampled (short side -> ``resolution``), cut
   into overlapping ``crop_size`` crops in a sliding window, every crop goes through CLIP (batched, across
   images) giving a class token and dense patch features (:mod:`ovlabel.models.clip`), and the patch
   features are re-assembled into one feature map of the whole image (overlaps averaged).
2. *Object presence detection*: each crop votes for the vocabulary class whose text feature is most
   similar to its class token; a class is present when it wins at least ``min_crops`` crops. The paper:
   "An object is considered as present in the image if it has been assigned to more than a predefined
   number of crops (set to 1 in our experiments)", i.e. at least 2 crops (``min_crops = 2``). A crop
   whose area is mostly padding (less than ``min_valid`` of it on the image) does not vote: its class
   token describes the padding colour as much as the image (ovlabel's choice, docs/stage1.1.md).
3. *Pseudo mask generation*: for each present class the ``points_per_class`` (5) patches of the feature
   map most similar to its text feature become foreground point prompts; SAM runs once per image (one
   image embedding) with every present class's prompts in one decoder call, and each class keeps the mask
   with the highest predicted IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.config import DetectConfig
from ovlabel.errors import OvlabelError
from ovlabel.masks import SOURCE_STAGE_1_1, MaskSet
from ovlabel.stages.automask import stability_score

#: Masks are upsampled to full resolution this many prompts at a time (bounds memory on large images).
UPSCALE_CHUNK = 16

#: Logit offset of the stability score stored with each Stage 1.1 mask (segment-anything's default
#: ``stability_score_offset``, the one ``AutoMaskConfig`` also defaults to). Stored, never filtered on.
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class CropPlan:
    """Sliding-window geometry of one image.

    ``size``: original (H, W); ``resized``: over-sampled (h, w); ``padded``: (h', w') >= resized, padded
    at the bottom/right so that crops tile it exactly; ``origins``: (y, x) top-left of each crop in
    padded pixels, row-major; ``patch``: CLIP patch size in padded pixels. Every origin is a multiple of
    ``patch``, so all crops share one patch grid of shape ``grid``.
    """

    size: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    crop: int
    stride: int
    patch: int
    origins: tuple[tuple[int, int], ...]

    @property
    def grid(self) -> tuple[int, int]:
        return self.padded[0] // self.patch, self.padded[1] // self.patch

    def valid_patches(self) -> np.ndarray:
        """bool ``grid``: patches whose centre lies on the image, not on padding."""
        gh, gw = self.grid
        ys = (np.arange(gh) + 0.5) * self.patch < self.resized[0]
        xs = (np.arange(gw) + 0.5) * self.patch < self.resized[1]
        return ys[:, None] & xs[None, :]

    def valid_fraction(self) -> np.ndarray:
        """float64 ``(n_crops,)``: the fraction of each crop's area that lies on the image (``resized``),
        the rest being bottom/right padding. Crop order as ``origins``."""
        rh, rw = self.resized
        out = np.empty(len(self.origins))
        for j, (y, x) in enumerate(self.origins):
            vy = min(max(rh - y, 0), self.crop)
            vx = min(max(rw - x, 0), self.crop)
            out[j] = vy * vx / (self.crop * self.crop)
        return out

    def patch_centers(self, flat_index: torch.Tensor) -> torch.Tensor:
        """(x, y) centres, in original-image pixels, of patches given by flat grid index. Float32 ``(..., 2)``."""
        gw = self.grid[1]
        ys = torch.div(flat_index, gw, rounding_mode="floor").float()
        xs = (flat_index % gw).float()
        sy = self.resized[0] / self.size[0]
        sx = self.resized[1] / self.size[1]
        x = ((xs + 0.5) * self.patch / sx).clamp(0, self.size[1] - 1e-3)
        y = ((ys + 0.5) * self.patch / sy).clamp(0, self.size[0] - 1e-3)
        return torch.stack([x, y], dim=-1)


def plan_crops(height: int, width: int, cfg: DetectConfig, input_size: int, patch: int) -> CropPlan:
    """Over-sample an ``height x width`` image and tile it with crops (see :class:`CropPlan`)."""
    crop = cfg.crop_size or input_size
    if crop % patch:
        raise OvlabelError(f"crop size {crop} must be a multiple of the CLIP patch size {patch}")
    stride = max(patch, int(round(crop * (1.0 - cfg.overlap) / patch)) * patch)
    scale = cfg.resolution / min(height, width)
    if max(height, width) * scale > cfg.resolution * cfg.max_aspect:
        scale = cfg.resolution * cfg.max_aspect / max(height, width)
    # Neither side shorter than one crop: an extreme strip (say 8x600) is stretched across its short side
    # rather than left as a few pixels of image in a crop of padding. Points map back per axis.
    rh, rw = max(crop, round(height * scale)), max(crop, round(width * scale))

    def count(n: int) -> int:
        return 1 if n <= crop else math.ceil((n - crop) / stride) + 1

    ny, nx = count(rh), count(rw)
    origins = tuple((iy * stride, ix * stride) for iy in range(ny) for ix in range(nx))
    padded = (crop + (ny - 1) * stride, crop + (nx - 1) * stride)
    return CropPlan((height, width), (rh, rw), padded, crop, stride, patch, origins)


def vote_classes(
    cls_tokens: torch.Tensor, text: torch.Tensor, min_crops: int, voters: np.ndarray | None = None, allowed=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop voting (seed 003 §3.2, "Object presence detection"). ``cls_tokens`` ``(n, D)`` and ``text``
    ``(C, D)`` L2-normalised; ``voters`` bool ``(n,)``: the crops allowed to vote (None = all).

    ``allowed``: None (every class may win), or the vocabulary indices this image may contain (e.g. the
    classes its caption names, :func:`ovlabel.captions.captions_to_classes`): each crop then votes for
    the most similar *allowed* class, and an empty list means no class is present.
    Returns ``votes`` int64 ``(C,)`` (voting crops each class won) and ``present``: sorted class indices
    with ``votes >= min_crops``. Ties go to the lower class index.
    """
    c = text.shape[0]
    if allowed is None:
        best = (cls_tokens @ text.T).argmax(dim=1)
    else:
        idx = torch.as_tensor(sorted({int(a) for a in allowed}), dtype=torch.int64, device=text.device)
        if len(idx) and (idx[0] < 0 or idx[-1] >= c):
            raise ValueError(f"allowed class indices must lie in [0, {c}), got {idx.tolist()}")
        if not len(idx):
            return torch.zeros(c, dtype=torch.int64, device=text.device), idx
        best = idx[(cls_tokens @ text[idx].T).argmax(dim=1)]
    if voters is not None:
        best = best[torch.as_tensor(np.asarray(voters, bool), device=best.device)]
    votes = torch.bincount(best, minlength=c)
    return votes, torch.nonzero(votes >= min_crops).flatten()


def crop_voters(plan: CropPlan, min_valid: float) -> np.ndarray:
    """bool ``(n_crops,)``: the crops of ``plan`` with at least ``min_valid`` of their area on the image."""
    return plan.valid_fraction() >= min_valid - 1e-12


def assemble_feature_map(plan: CropPlan, crops: list[tuple[int, torch.Tensor]], dim: int, device) -> torch.Tensor:
    """Place crop patch features ``(g, g, D)`` (given with their crop number) on the image grid,
    average overlaps and L2-normalise. Returns float32 ``(gh, gw, D)``; padding-only patches are zero."""
    gh, gw = plan.grid
    acc = torch.zeros(gh, gw, dim, device=device)
    cnt = torch.zeros(gh, gw, 1, device=device)
    for j, feats in crops:
        y, x = (o // plan.patch for o in plan.origins[j])
        g = feats.shape[0]
        acc[y : y + g, x : x + g] += feats
        cnt[y : y + g, x : x + g] += 1
    return F.normalize(acc / cnt.clamp(min=1), dim=-1)


def select_points(
    feature_map: torch.Tensor, valid: np.ndarray, text: torch.Tensor, k: int, plan: CropPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` patches most similar to each class text feature ``text`` ``(P, D)``, among patches on
    the image. Returns point coordinates float32 ``(P, k, 2)`` as (x, y) original pixels (patch centres)
    and their flat grid indices int64 ``(P, k)``, most similar first."""
    gh, gw, d = feature_map.shape
    sim = feature_map.reshape(-1, d) @ text.T  # (G, P)
    valid_t = torch.as_tensor(valid.reshape(-1), device=sim.device)
    sim = sim.masked_fill(~valid_t[:, None], float("-inf"))
    k = min(k, int(valid_t.sum()))
    idx = sim.topk(k, dim=0).indices.T.contiguous()  # (P, k)
    return plan.patch_centers(idx.cpu()), idx


@dataclass
class DetectResult:
    """Stage 1.1 output for one image: ``masks`` (one per present class with a non-empty mask),
    ``votes`` int64 ``(C,)`` and ``present`` class indices."""

    masks: MaskSet
    votes: np.ndarray
    present: np.ndarray


def _crop(image: torch.Tensor, plan: CropPlan, j: int) -> torch.Tensor:
    y, x = plan.origins[j]
    return image[:, y : y + plan.crop, x : x + plan.crop]


class QuerySamWithClip:
    """Stage 1.1 over batches of images. ``clip``/``sam`` are :class:`ClipModel`/:class:`SamModel` (or
    objects with the same methods); ``text`` is ``(C, D)`` L2-normalised class features on CLIP's device."""

    def __init__(self, clip, sam, text: torch.Tensor, cfg: DetectConfig):
        self.clip, self.sam, self.text, self.cfg = clip, sam, text, cfg

    def plan(self, height: int, width: int) -> CropPlan:
        return plan_crops(height, width, self.cfg, self.clip.input_size, self.clip.patch_size)

    def process(self, images: list[np.ndarray], allowed: list | None = None) -> list[DetectResult]:
        """Label a batch of RGB uint8 ``(H, W, 3)`` images; crops of all of them share CLIP batches.
        ``allowed``: None, or per image None / the class indices it may contain (see :func:`vote_classes`)."""
        plans = [self.plan(*img.shape[:2]) for img in images]
        cls_tokens, fmaps = self.clip_pass(images, plans)
        results = []
        for start in range(0, len(images), self.cfg.sam_batch_size):
            batch = images[start : start + self.cfg.sam_batch_size]
            for offset, emb in enumerate(self.sam.embed(batch)):
                i = start + offset
                results.append(self.query_sam(emb, plans[i], cls_tokens[i], fmaps[i], (allowed or [None] * len(images))[i]))
        return results

    def clip_pass(self, images, plans) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """High-resolution feature extraction for a batch of images: per image, the class tokens of its
        crops ``(n, D)`` and the assembled feature map ``(gh, gw, D)`` (see :func:`assemble_feature_map`)."""
        clip, bs = self.clip, self.cfg.clip_batch_size
        prepared = []
        for img, plan in zip(images, plans):
            t = clip.prepare(img, plan.resized)
            pad = (0, plan.padded[1] - plan.resized[1], 0, plan.padded[0] - plan.resized[0])
            prepared.append(F.pad(t, pad) if any(pad) else t)
        jobs = [(i, j) for i, plan in enumerate(plans) for j in range(len(plan.origins))]
        cls_parts: list[list[torch.Tensor]] = [[] for _ in images]
        dense_parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in images]
        fmaps: list[torch.Tensor | None] = [None] * len(images)
        remaining = [len(p.origins) for p in plans]
        for b in range(0, len(jobs), bs):
            chunk = jobs[b : b + bs]
            crops = torch.stack([_crop(prepared[i], plans[i], j) for i, j in chunk])
            cls, dense = clip.encode_crops(crops)
            for (i, j), c, d in zip(chunk, cls, dense):
                cls_parts[i].append(c)
                dense_parts[i].append((j, d))
                remaining[i] -= 1
                if remaining[i] == 0:  # assemble as soon as an image is complete, then free its crops
                    fmaps[i] = assemble_feature_map(plans[i], dense_parts[i], d.shape[-1], d.device)
                    dense_parts[i] = []
        return [torch.stack(c) for c in cls_parts], fmaps

    def query_sam(self, emb, plan: CropPlan, cls_tokens: torch.Tensor, fmap: torch.Tensor, allowed=None) -> DetectResult:
        """Crop voting (among ``allowed`` classes, if given), then one SAM decoder call with every present
        class's points on embedding ``emb``."""
        votes, present = vote_classes(cls_tokens, self.text, self.cfg.min_crops, crop_voters(plan, self.cfg.min_valid),
                                      allowed)
        return DetectResult(self.query_points(emb, plan, present, fmap), votes.cpu().numpy(), present.cpu().numpy())

    def query_points(self, emb, plan: CropPlan, present: torch.Tensor, fmap: torch.Tensor) -> MaskSet:
        """The masks of the ``present`` classes (int64 vocabulary indices): their ``points_per_class`` most
        similar patches of ``fmap`` prompt SAM, all classes in one decoder call on embedding ``emb``."""
        if len(present) == 0:
            return MaskSet.empty()
        coords, _ = select_points(fmap, plan.valid_patches(), self.text[present], self.cfg.points_per_class, plan)
        labels = torch.ones(coords.shape[:2], dtype=torch.int64)
        pred = self.sam.predict_points(emb, coords, labels, multimask=self.cfg.multimask)
        vh, vw = self.sam.low_res_geometry(emb)[:2]
        stab = stability_score(pred.low_res_logits[:, 0, :vh, :vw], self.sam.mask_threshold, STABILITY_OFFSET)
        parts = []
        present_np = present.cpu().numpy()
        for s in range(0, len(present_np), UPSCALE_CHUNK):
            sl = slice(s, s + UPSCALE_CHUNK)
            dense = self.sam.upscale(emb, pred.low_res_logits[sl])
            parts.append(MaskSet.from_dense(
                dense, present_np[sl], pred.scores[sl].cpu().numpy(), SOURCE_STAGE_1_1,
                points=list(coords[sl].numpy()), stability=stab[sl].float().cpu().numpy(),
            ))
        return MaskSet.concat(parts)
