"""OVSeg's mask prompt tuning (seed 002 §3.3, §4.1): choosing a run's training crops, scoring them, and the
training loop. The ``train-mpt`` command is :mod:`ovlabel.training.mpt`.

OVSeg tunes the prompts on 440K mask-category pairs mined from COCO Captions (§3.2: caption nouns matched
to mask proposals by CLIP) with open_clip's contrastive loss over each batch (facebookresearch/ov-seg,
open_clip_training/src/training/train.py, ``ClipLoss``). ovlabel has no such pairs, and its annotation-free
substitute is the run itself: the masked crops of the run's most confident masks (the ``score`` column,
highest first: ``fraction`` of each class's masks, at least one, at most ``max_crops`` in all), each with
the class the run gave it as its target. With a fixed vocabulary, many crops of a batch share a class, so
the in-batch contrastive loss is replaced by the cross-entropy over the run's classes of
``logit_scale * cos(crop, class text feature)``, CLIP's own zero-shot classifier (ovlabel's choice).

Crops are made exactly as the ``ovseg`` classifier makes them at labelling time
(:func:`ovlabel.stages.classify.masked_crops`), and the patch mask with the same layout
(:func:`ovlabel.stages.classify.mask_crops`). Optimiser as in §4.1: AdamW, lr 2e-2, weight decay 0, cosine
annealing over all steps, batch 256, 5 epochs, prompt depth 3. The checkpoint (``CKPT/mpt.safetensors`` +
``config.json``, written after every epoch; ``train.json`` provenance) is read by the classifier through
``ClassifyConfig.mpt``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.config.mpt import MptConfig


@dataclass
class CropSet:
    """Training crops: ``crops`` uint8 ``(N, S, S, 3)``, ``keep`` bool ``(N, S/p, S/p)``, ``labels`` int64
    ``(N,)`` vocabulary indices, ``scores`` float32 ``(N,)``; ``skipped``: (file, reason)."""

    crops: np.ndarray
    keep: torch.Tensor
    labels: np.ndarray
    scores: np.ndarray
    skipped: list = field(default_factory=list)


def select_masks(masks: dict, fraction: float, max_crops: int) -> list[tuple[int, int]]:
    """``(image_id, mask index)`` of the most confident masks: per class the ``ceil(fraction * n)``
    highest-scoring (at least one), then at most ``max_crops`` of those by score. Ties keep file order."""
    rows = [(float(ms.scores[j]), int(ms.class_index[j]), iid, j) for iid, ms in sorted(masks.items()) for j in range(len(ms))]
    by_class: dict[int, list] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    chosen = []
    for items in by_class.values():
        items = sorted(items, key=lambda r: -r[0])
        chosen += items[: max(1, math.ceil(fraction * len(items)))]
    chosen = sorted(chosen, key=lambda r: -r[0])[:max_crops]
    return sorted((iid, j) for _, _, iid, j in chosen)


def _keep(mask_crops_: np.ndarray, patch: int) -> torch.Tensor:
    from ovlabel.models.clip_mpt import patch_keep

    return patch_keep(mask_crops_, patch)


def crop_logits(clip, prompts, crops: np.ndarray, keep: torch.Tensor, text: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``logit_scale * cos`` of uint8 crops ``(N, S, S, 3)`` with class features ``text (K, D)``: float32
    ``(N, K)`` (no gradient); ``prompts=None`` is the untuned CLIP."""
    from ovlabel.models.clip_mpt import encode_masked

    out = []
    s = crops.shape[1]
    with torch.no_grad():
        for b in range(0, len(crops), batch):
            x = torch.stack([clip.prepare(c, (s, s)) for c in crops[b : b + batch]])
            out.append(clip.logit_scale * encode_masked(clip, x, keep[b : b + batch], prompts) @ text.T)
    return torch.cat(out) if out else torch.zeros(0, text.shape[0])


def fit(clip, crops: np.ndarray, keep: torch.Tensor, labels: np.ndarray, text: torch.Tensor, cfg: MptConfig,
        on_epoch=None):
    """Learn mask prompts (OVSeg §4.1's optimiser, see the module docstring) for uint8 crops ``(N, S, S,
    3)`` with patch masks ``keep`` ``(N, S/p, S/p)`` and class targets ``labels`` ``(N,)`` (rows of the
    class features ``text`` ``(K, D)``). ``on_epoch(prompts, history)`` runs after every epoch.
    Returns ``(prompts, history)``; CLIP stays frozen."""
    from ovlabel.models.clip_mpt import build_prompts, encode_masked

    prompts = build_prompts(clip, cfg.depth, cfg.seed)
    opt = torch.optim.AdamW(prompts.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(labels) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    y_all = torch.as_tensor(labels, device=clip.device)
    s = crops.shape[1]
    history = []
    from tqdm import tqdm

    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = torch.as_tensor(np.random.default_rng([cfg.seed, epoch]).permutation(len(labels)))
        total, correct = 0.0, 0
        for st in tqdm(range(steps), desc=f"train-mpt {epoch + 1}/{cfg.epochs}", unit="step", disable=not cfg.progress):
            idx = order[st * cfg.batch_size : (st + 1) * cfg.batch_size]
            x = torch.stack([clip.prepare(crops[i], (s, s)) for i in idx.tolist()])
            y = y_all[idx.to(y_all.device)]
            logits = clip.logit_scale * encode_masked(clip, x, keep[idx], prompts) @ text.T
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        history.append({"epoch": epoch + 1, "loss": total / len(order), "accuracy": correct / len(order),
                        "lr_end": float(sched.get_last_lr()[0]), "seconds": round(time.perf_counter() - t0, 3)})
        if on_epoch is not None:
            on_epoch(prompts, history)
    return prompts, history
