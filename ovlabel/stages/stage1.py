"""Stage 1 of FMbSeg (seed 003 §3.2) over a batch of images: 1.1 and/or 1.2 with each encoder pass once.

Per image, in this order, each computed once and shared:

1. the CLIP crop pass (class tokens -> detected classes; dense features -> feature map), which both
   stages need (1.1 for its point prompts, 1.2 for the detected classes and FMbSeg's mask features);
2. the SAM image embedding, which both stages decode (1.1 with CLIP's points, 1.2 with a point grid);
3. Stage 1.1's decoder call; Stage 1.2's automatic masks and their classification.

OVSeg's masked crops (when that classifier is on) are collected over the whole batch and go through CLIP
together, so they fill CLIP batches across images as Stage 1.1's crops do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ovlabel.config import AutoMaskConfig, ClassifyConfig, DetectConfig
from ovlabel.masks import SOURCE_STAGE_1_2, MaskSet
from ovlabel.stages import automask, classify
from ovlabel.stages.detect import QuerySamWithClip, crop_voters, vote_classes


@dataclass
class Stage1Result:
    """One image's masks per stage computed (``"1.1"``/``"1.2"`` -> :class:`MaskSet`), and its crop votes."""

    masks: dict[str, MaskSet] = field(default_factory=dict)
    votes: np.ndarray | None = None
    present: np.ndarray | None = None


@dataclass
class _Pending:
    """A Stage 1.2 result waiting for OVSeg crop probabilities: masks as RLE, FMbSeg probabilities (over
    the detected classes, and over the vocabulary for the margin)."""

    index: int
    masks: MaskSet
    p_fmbseg: torch.Tensor
    present: np.ndarray
    crops: np.ndarray
    vocab: torch.Tensor
    keep: torch.Tensor | None = None  # patches with mask pixels, for mask prompts (``mpt``)


class Stage1:
    """FMbSeg Stage 1 (1.1 and 1.2) on batches of images.

    ``clip``/``sam``: :class:`~ovlabel.models.clip.ClipModel` / :class:`~ovlabel.models.sam.SamModel`
    (or objects with the same methods); ``text``: L2-normalised class features ``(C, D)`` with the run's
    templates; ``crop_text``: the same with the masked-crop classifier's templates (needed only by the
    ``ovseg`` and ``ensemble`` classifiers); ``mpt``: a
    :class:`~ovlabel.models.clip_mpt.MaskPromptClassifier` (OVSeg §3.3) that encodes the masked crops
    instead of plain CLIP, or None.
    """

    def __init__(
        self, clip, sam, text: torch.Tensor, detect: DetectConfig, automask_cfg: AutoMaskConfig,
        classify_cfg: ClassifyConfig, crop_text: torch.Tensor | None = None, mpt=None,
    ):
        self.mpt = mpt
        if classify_cfg.needs_crops and crop_text is None:
            raise ValueError(f"classifier {classify_cfg.classifier!r} needs crop_text")
        self.detect = QuerySamWithClip(clip, sam, text, detect)
        self.clip, self.sam, self.text, self.crop_text = clip, sam, text, crop_text
        self.automask_cfg, self.classify = automask_cfg, classify_cfg
        self.scale = float(clip.logit_scale)

    def process(self, images: list[np.ndarray], needs: list[set[str]], allowed: list | None = None) -> list[Stage1Result]:
        """Run the stages ``needs[i]`` (subsets of {"1.1", "1.2"}) on RGB uint8 ``(H, W, 3)`` images.

        ``allowed``: None, or parallel to ``images``: None or the vocabulary indices image ``i`` may
        contain (its caption's classes, :func:`ovlabel.captions.captions_to_classes`); crops vote only
        among those (:func:`~ovlabel.stages.detect.vote_classes`), so both stages label with them only."""
        allowed = allowed if allowed is not None else [None] * len(images)
        det = self.detect
        plans = [det.plan(*img.shape[:2]) for img in images]
        cls_tokens, fmaps = det.clip_pass(images, plans)
        results = [Stage1Result() for _ in images]
        pending: list[_Pending] = []
        bs = det.cfg.sam_batch_size
        for start in range(0, len(images), bs):
            for offset, emb in enumerate(self.sam.embed(images[start : start + bs])):
                i = start + offset
                res = results[i]
                voters = crop_voters(plans[i], det.cfg.min_valid)
                votes, present = vote_classes(cls_tokens[i], self.text, det.cfg.min_crops, voters, allowed[i])
                res.votes, res.present = votes.cpu().numpy(), present.cpu().numpy()
                if "1.1" in needs[i]:
                    res.masks["1.1"] = self._classify_11(det.query_points(emb, plans[i], present, fmaps[i]),
                                                         plans[i], fmaps[i], res.present)
                if "1.2" in needs[i]:
                    p = self._stage12(i, images[i], emb, plans[i], fmaps[i], res.present)
                    if isinstance(p, _Pending):
                        pending.append(p)
                    else:
                        res.masks["1.2"] = p
            del emb
        if pending:
            self._classify_crops(pending, results)
        return results

    def _classify_11(self, masks: MaskSet, plan, fmap, present: np.ndarray) -> MaskSet:
        """Store each Stage 1.1 mask's vocabulary margin (:func:`classify.vocabulary_margin`) without
        changing its class: a label-quality signal (docs/quality.md), not a decision."""
        if not len(masks):
            return masks
        feats = classify.mean_features(classify.mask_coverage(torch.from_numpy(masks.decode()), plan), fmap)
        masks.margin = classify.vocabulary_margin(classify.class_probabilities(feats, self.text, self.scale),
                                                  masks.class_index)
        return masks

    def _stage12(self, i, image, emb, plan, fmap, present: np.ndarray):
        """Automatic masks of one image, classified by FMbSeg at once; returns a MaskSet, or a
        :class:`_Pending` whose OVSeg crops still have to go through CLIP."""
        if len(present) == 0:  # nothing detected: no class a mask could take
            return MaskSet.empty()
        auto = automask.generate(self.sam, emb, self.automask_cfg)
        if not len(auto):
            return MaskSet.empty()
        placeholder = np.full(len(auto), present[0], dtype=np.int32)
        masks = MaskSet.from_dense(auto.masks, placeholder, auto.pred_iou.numpy(), SOURCE_STAGE_1_2,
                                   stability=auto.stability.numpy())
        cfg = self.classify
        feats = classify.mean_features(classify.mask_coverage(auto.masks, plan), fmap)
        vocab = classify.class_probabilities(feats, self.text, self.scale)  # every class: the margin's view
        p = None
        if cfg.classifier in ("fmbseg", "ensemble"):
            p = classify.class_probabilities(feats, self.text[torch.as_tensor(present)], self.scale)
        if not cfg.needs_crops:
            return _finish(masks, p, present, cfg.top_k, vocab)
        crops = classify.masked_crops(image, auto.masks, masks.boxes, self.clip.input_size, self.clip.fill_color,
                                      cfg.crop_shape)
        keep = None
        if self.mpt is not None:
            from ovlabel.models.clip_mpt import patch_keep
            from ovlabel.stages.classify import mask_crops

            keep = patch_keep(mask_crops(auto.masks, masks.boxes, self.clip.input_size, cfg.crop_shape),
                              self.clip.patch_size)
        return _Pending(i, masks, p, present, crops, vocab, keep)

    def _classify_crops(self, pending: list[_Pending], results: list[Stage1Result]) -> None:
        """OVSeg probabilities for every pending image, with the crops of all of them in shared CLIP batches."""
        jobs = [(k, j) for k, p in enumerate(pending) for j in range(len(p.crops))]
        feats: list[list[torch.Tensor]] = [[] for _ in pending]
        bs = self.detect.cfg.clip_batch_size
        size = self.clip.input_size
        for b in range(0, len(jobs), bs):
            chunk = jobs[b : b + bs]
            batch = torch.stack([self.clip.prepare(pending[k].crops[j], (size, size)) for k, j in chunk])
            if self.mpt is not None:
                cls = self.mpt.encode(batch, torch.stack([pending[k].keep[j] for k, j in chunk]))
            else:
                cls, _ = self.clip.encode_crops(batch)
            for (k, _), c in zip(chunk, cls):
                feats[k].append(c)
        cfg = self.classify
        for k, p in enumerate(pending):
            text = self.crop_text[torch.as_tensor(p.present)]
            p_hat = classify.class_probabilities(torch.stack(feats[k]), text, self.scale)
            probs = p_hat if cfg.classifier == "ovseg" else classify.ensemble(p.p_fmbseg, p_hat, cfg.ensemble_lambda)
            results[p.index].masks["1.2"] = _finish(p.masks, probs, p.present, cfg.top_k, p.vocab)


def _finish(masks: MaskSet, probs: torch.Tensor, present: np.ndarray, k: int, vocab: torch.Tensor) -> MaskSet:
    """Classes and top-k from ``probs`` (over ``present``); the vocabulary margin from ``vocab`` (N, C)."""
    best, tops = classify.topk(probs, present, k)
    masks.class_index = best
    masks.topk = tops
    masks.margin = classify.vocabulary_margin(vocab, best)
    return masks
