"""PnP-OVSS salience (seed 004 §3.1–3.3): BLIP cross-attention GradCAM, Salience DropOut, threshold, blur, CRF.

Per image, with K classes in one prompt (§3):

1. GradCAM (§3.1, Eq. 1): ``clamp(∂s/∂A ⊙ A, 0)`` for the cross-attention ``A`` of layer L, head H (or the
   mean over heads) and the ITM match logit ``s``; a class's map is the mean over its tokens.
2. Salience DropOut (§3.2, Eq. 2–5): the class maps are summed into one class-agnostic map; its
   ``drop_patches`` highest patches among those remaining are zeroed in BLIP's input and GradCAM is
   recomputed on the remaining image; a dropped patch gets zero salience in every later iteration. The first
   iteration sees every patch; the output per class is the sum of its maps over the ``rounds`` iterations.
   Default 4 passes, the full image plus 3 drops: Tab. 5's "+ Drop 1", "+ Drop 2", "+ Drop 3" and the released
   code's ``--drop_iter 4`` (letitiabanana/PnP-OVSS ``Run_seg.sh``, README).
3. Threshold (§3.3) as the released code does it (``PnP_OVSS_0514_updated_segmentation.py``): each class map
   is min-max normalised to [0, 1] at patch resolution only to decide where it reaches ``threshold``; the
   *raw* salience is kept there and zeroed elsewhere, upsampled bilinearly (``align_corners=True``) to the
   image, and a pixel takes the class with the highest raw value; where every class is zero it is
   unlabeled (the code's background channel, ``max == 0``).
4. Blur + dense CRF (§3.3), as the released code: every channel (the classes and the unlabeled/background
   channel) is blurred with std ``crf.blur_sigma`` of the long side and min-max normalised; their softmax is
   the CRF's unary (:func:`ovlabel.crf.unaries_from_salience`); a dense CRF with CutLER's parameters decides
   each pixel. Without the CRF, the argmax of the blurred maps. ``unary="indicator"`` instead blurs the hard
   0/1 masks of the label map and uses them as probabilities (the paper's sentence read literally).

Every class of an image goes through one forward and one gradient pass per iteration; images batch.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.crf import UNLABELED, dense_crf, unaries_from_labels, unaries_from_salience
from ovlabel.errors import OvlabelError
from ovlabel.masks import MaskSet
from ovlabel.salience_config import SalienceConfig

#: ``source`` of the masks salience writes.
SOURCE_SALIENCE = "salience"


def gradcam(attn: torch.Tensor, grad: torch.Tensor, head: int | None) -> torch.Tensor:
    """Seed 004 Eq. 1: ``clamp(grad ⊙ attn, 0)``, for 1-based ``head`` or averaged over heads (None).

    ``attn``, ``grad``: ``(B, heads, T, N)``. Returns ``(B, T, N)``.
    """
    cam = (grad * attn).clamp(min=0)
    return cam.mean(dim=1) if head is None else cam[:, head - 1]


def class_maps(cam: torch.Tensor, spans) -> torch.Tensor:
    """Per-class maps ``(K, N)`` from one image's token maps ``cam`` ``(T, N)``: the mean over each class's
    token span ``(start, stop)`` (§3: "if a class name contains two or more tokens, we take the mean")."""
    if not spans:
        return cam.new_zeros((0, cam.shape[-1]))
    return torch.stack([cam[a:b].mean(dim=0) for a, b in spans])


def salience_dropout(
    compute: Callable[[torch.Tensor], list[torch.Tensor]], pixels: torch.Tensor, grid: int, patch: int,
    rounds: int, drop: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Seed 004 §3.2, Eq. 2–5.

    ``compute(pixels)`` returns one ``(K_i, grid*grid)`` map per image of ``pixels`` ``(B, 3, S, S)`` (S =
    ``grid * patch``). Iteration 1 sees all patches; after each iteration but the last, the ``drop``
    patches with the highest summed salience among those still kept are zeroed in the input (``pixels`` is
    not modified: a copy is) and removed for good. Returns ``(maps, keep)``: per image the sum over the
    ``rounds`` iterations of its maps, each multiplied by the keep mask of its iteration, and the final
    keep mask bool ``(B, grid*grid)``.
    """
    b = pixels.shape[0]
    n = grid * grid
    keep = torch.ones((b, n), dtype=torch.bool, device=pixels.device)
    current = pixels.clone()
    total: list[torch.Tensor] | None = None
    for r in range(rounds):
        maps = [m * keep[i].to(m.dtype) for i, m in enumerate(compute(current))]
        total = maps if total is None else [t + m for t, m in zip(total, maps)]
        if r == rounds - 1 or drop == 0:
            continue
        for i, m in enumerate(maps):
            agg = m.sum(dim=0).float().cpu()
            kept = keep[i].cpu()
            agg[~kept] = float("-inf")
            order = torch.argsort(agg, descending=True, stable=True)
            keep[i, order[: min(drop, int(kept.sum()))].to(keep.device)] = False
        patch_keep = keep.view(b, 1, grid, 1, grid, 1).expand(b, 1, grid, patch, grid, patch)
        current = current * patch_keep.reshape(b, 1, grid * patch, grid * patch).to(current.dtype)
    return total or [], keep


def normalise(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each class map of ``maps`` ``(K, ...)`` to [0, 1]; a constant map becomes 0."""
    maps = np.asarray(maps, np.float32)
    if not len(maps):
        return maps
    flat = maps.reshape(len(maps), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = (flat - lo[:, None]) / span[:, None]
    out[hi <= lo] = 0.0
    return out.reshape(maps.shape)


def thresholded_maps(maps: np.ndarray, threshold: float) -> np.ndarray:
    """The raw salience ``maps`` ``(K, g, g)`` where each class's min-max-normalised map reaches ``threshold``,
    0 elsewhere (letitiabanana/PnP-OVSS ``PnP_OVSS_0514_updated_segmentation.py``:
    ``drop_pred_map * thresholded_drop_map``). float32 ``(K, g, g)``."""
    maps = np.asarray(maps, np.float32)
    return maps * (normalise(maps) >= threshold)


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of ``(K, g, g)`` maps to ``(K, height, width)`` with ``align_corners=True``, as the
    released code. float32."""
    if not len(maps):
        return np.zeros((0, height, width), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=True)[0].numpy()


def hard_labels(maps: np.ndarray, classes, threshold: float, height: int, width: int) -> np.ndarray:
    """Thresholded label map uint8 ``(height, width)`` from raw salience ``maps`` ``(K, g, g)`` of the
    vocabulary indices ``classes`` ``(K,)``: :func:`thresholded_maps`, :func:`upsample`, the class with the
    highest raw value per pixel (ties: the lower index), 255 where every class is 0."""
    if not len(maps):
        return np.full((height, width), UNLABELED, np.uint8)
    up = upsample(thresholded_maps(maps, threshold), height, width)
    best = up.argmax(axis=0)
    out = np.asarray(classes, np.uint8)[best]
    out[up.max(axis=0) <= 0] = UNLABELED
    return out


def postprocess(image: np.ndarray, maps: np.ndarray, classes, cfg: SalienceConfig, timings: Counter | None = None):
    """Threshold, blur and CRF (§3.3) for one image.

    ``image`` RGB uint8 ``(H, W, 3)``; ``maps`` float ``(K, g, g)`` raw salience of the vocabulary indices
    ``classes``. Returns ``(label_map uint8 (H, W), confidence float32 (H, W), probs float32 (L, H, W),
    labels int32 (L,))``: the final labels (255 = unlabeled), the winning probability per pixel (the CRF
    marginal, or the unary without CRF), and the unaries with their labels (255 last).
    """
    h, w = image.shape[:2]
    hard = hard_labels(maps, classes, cfg.threshold, h, w)
    if cfg.unary == "indicator" or not len(classes):
        probs, labels = unaries_from_labels(hard, cfg.crf)
    else:
        kept = upsample(thresholded_maps(maps, cfg.threshold), h, w)
        probs, labels = unaries_from_salience(kept, classes, cfg.crf)
    if not len(labels):
        return hard, np.ones((h, w), np.float32), probs, labels
    q = probs
    if cfg.use_crf and len(labels) > 1:
        tic = time.perf_counter()
        q = dense_crf(image, probs, cfg.crf)
        if timings is not None:
            timings["crf"] += time.perf_counter() - tic
    best = q.argmax(axis=0)
    final = labels.astype(np.uint8)[best]
    confidence = np.take_along_axis(q, best[None], axis=0)[0]
    return final, confidence, probs, labels


def to_masks(label_map: np.ndarray, confidence: np.ndarray) -> MaskSet:
    """One mask per class of ``label_map`` (source ``salience``), scored by its mean ``confidence``."""
    classes = [int(c) for c in np.unique(label_map) if c != UNLABELED]
    if not classes:
        return MaskSet.empty()
    masks = np.stack([label_map == c for c in classes])
    return MaskSet.from_dense(masks, classes, [float(confidence[m].mean()) for m in masks], SOURCE_SALIENCE)


class SalienceExtractor:
    """Salience maps and labels for batches of images with a BLIP model (:class:`ovlabel.models.blip.BlipModel`).

    ``timings`` accumulates seconds of ``crf`` (the BLIP wrapper keeps ``forward``/``backward``).
    """

    def __init__(self, blip, cfg: SalienceConfig):
        if cfg.layer > blip.num_layers:
            raise OvlabelError(f"--layer {cfg.layer} is out of range: {blip.identity['spec']} has {blip.num_layers} "
                               f"cross-attention layers (1..{blip.num_layers})")
        if cfg.head is not None and cfg.head > blip.num_heads:
            raise OvlabelError(f"--head {cfg.head} is out of range: {blip.identity['spec']} has {blip.num_heads} "
                               f"heads per cross-attention layer (1..{blip.num_heads}, or 'mean')")
        if cfg.resolution % blip.patch_size:
            raise OvlabelError(f"--resolution {cfg.resolution} is not a multiple of BLIP's patch size {blip.patch_size}")
        self.blip, self.cfg = blip, cfg
        self.grid = cfg.resolution // blip.patch_size
        self.timings: Counter = Counter()

    def prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        """BLIP inputs ``(B, 3, S, S)`` for RGB uint8 images."""
        return torch.stack([self.blip.prepare(img, self.cfg.resolution) for img in images])

    def maps(self, pixels: torch.Tensor, prompts, layer: int | None = None, head=-1, rounds: int | None = None):
        """Salience maps after Salience DropOut: per image float32 ``(K_i, g, g)`` (numpy), for ``pixels`` from
        :meth:`prepare` and one :class:`ovlabel.models.blip.Prompt` per image. ``layer``/``head``/``rounds``
        override the config (1-based; ``head=None`` is the mean over heads)."""
        layer = self.cfg.layer if layer is None else layer
        head = self.cfg.head if head == -1 else head
        rounds = self.cfg.rounds if rounds is None else rounds

        def compute(px):
            attn, grad = self.blip.attention_and_gradients(px, prompts, [layer - 1])[layer - 1]
            cam = gradcam(attn, grad, head)
            return [class_maps(cam[i], p.spans) for i, p in enumerate(prompts)]

        total, _ = salience_dropout(compute, pixels, self.grid, self.blip.patch_size, rounds, self.cfg.drop_patches)
        return [t.reshape(-1, self.grid, self.grid).cpu().numpy() for t in total]

    def label(self, images: list[np.ndarray], names: list[list[str]], classes: list[list[int]]):
        """Full pipeline for a batch: per image ``(MaskSet, label_map uint8 (H, W), soft)`` where ``soft`` is
        ``(probs float32 (K', H, W), classes int32 (K',))``: the blurred unaries of the classes (without the
        unlabeled channel), the soft-map format of :data:`ovlabel.artifacts.SOFT_MAP_FORMAT`."""
        results = [None] * len(images)
        todo = [i for i, n in enumerate(names) if n]
        for i, img in enumerate(images):
            if not names[i]:  # nothing to look for: all unlabeled
                h, w = img.shape[:2]
                empty = (np.zeros((0, h, w), np.float32), np.zeros(0, np.int32))
                results[i] = (MaskSet.empty(), np.full((h, w), UNLABELED, np.uint8), empty)
        if todo:
            prompts = [self.blip.prompt(names[i], self.cfg.itm_token) for i in todo]
            maps = self.maps(self.prepare([images[i] for i in todo]), prompts)
            for i, m in zip(todo, maps):
                final, conf, probs, labels = postprocess(images[i], m, classes[i], self.cfg, self.timings)
                keep = labels != UNLABELED
                results[i] = (to_masks(final, conf), final, (probs[keep], labels[keep]))
        return results
