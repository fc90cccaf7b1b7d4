"""PnP-OVSS's label-free hyper-parameter search (seed 004 §3.4, Eq. 6–7; §4.1; §9): the reward and the search.

The ``tune`` command that runs it on a run or a folder is :mod:`ovlabel.training.tune`.

Reward of one image (Eq. 6–7): for each of its classes c with mask M_c, CLIP's probability of c for the
masked image ``x ⊙ M_c`` is compared with its probability of c for a black image; the reward counts the
classes where the masked image wins, ``Σ_c 1[P(c | x ⊙ M_c) > P(c | 0)]``, summed over the images. P, "the
normalized probability", is by default the softmax of CLIP's scaled cosine similarities over the image's
own classes, as the released search computes it (letitiabanana/PnP-OVSS
``pnp_get_attention_textloc_weaklysupervised_search.py``: ``get_clipsim_for_pnmask`` and ``cal_clip_sim``,
text = the image's class names, ``sims / 0.01`` then a softmax): a one-class image can never score.
``reward_norm="vocabulary"`` normalises over the whole vocabulary instead.

Search (§4.1, §9): a seeded random search over the grid of Tab. 2: first (layer, head, threshold) scored with
GradCAM masks; then, those fixed, the blur std scored with the blurred Salience DropOut masks before the CRF.
Costs: one BLIP forward and one gradient pass per image capture every layer's attention and gradient at
once, so a (layer, head, threshold) trial costs only CLIP passes over the masked images; the blur phase
costs ``rounds`` BLIP passes per image once, then CLIP passes.

The masks are computed at CLIP's input size: the image is resized (squashed) to CLIP's square input, as a
whole image with the mask applied is what Eq. 6 scores. Each class has its own mask, as in the released
search (``Dataset_coco_textloc.py``, ``Wsupervised_pn_mask_for_allimgs``: one threshold mask per class, so
masks may overlap): GradCAM phase, where the class's normalised map reaches the threshold
(:func:`ovlabel.stages.salience.thresholded_maps`); blur phase, the class's thresholded Salience DropOut map
blurred and min-max normalised (:func:`ovlabel.crf.blurred_channels`), the map the CRF's unary starts from.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def reward_from_probs(masked: np.ndarray, black: np.ndarray) -> int:
    """Eq. 6: the number of classes whose masked-image probability ``masked[k]`` exceeds the black image's
    ``black[k]`` (both ``(K,)``, each the probability of the image's own class k)."""
    return int(np.sum(np.asarray(masked) > np.asarray(black)))


def reward_from_logits(masked: np.ndarray, black: np.ndarray, classes, norm: str = "image") -> int:
    """Eq. 6–7 from CLIP logits (scale x cosine): ``masked`` float ``(K, C)``, row k the logits over the
    vocabulary of the image masked with class k's mask; ``black`` ``(C,)`` the black image's; ``classes``
    the K vocabulary indices of the image's classes. ``norm="image"``: the softmax runs over the K classes'
    columns only (the released search); ``"vocabulary"``: over all C columns. Returns the reward (0..K)."""
    idx = np.asarray(classes, np.int64)
    masked, black = np.asarray(masked, np.float64), np.asarray(black, np.float64)
    if norm == "image":
        masked, black, own = masked[:, idx], black[idx], np.arange(len(idx))
    else:
        own = idx

    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return reward_from_probs(softmax(masked)[np.arange(len(idx)), own], softmax(black)[own])


class ClipReward:
    """The reward of §3.4 with a CLIP model (:class:`ovlabel.models.clip.ClipModel` or anything with its
    ``input_size``, ``logit_scale``, ``prepare`` and ``encode_crops``) and class features ``text`` ``(C, D)``
    (L2-normalised, vocabulary order). ``norm``: see :func:`reward_from_logits`. The logits are CLIP's
    logit scale times the cosine (100 for OpenAI's weights, the released search's ``1 / 0.01``)."""

    def __init__(self, clip, text: torch.Tensor, norm: str = "image"):
        self.clip, self.text, self.norm = clip, text.float(), norm
        self.size = int(clip.input_size)
        black = np.zeros((self.size, self.size, 3), np.uint8)
        self.black = self._logits(black[None])[0]  # (C,)

    @torch.inference_mode()
    def _logits(self, images: np.ndarray) -> np.ndarray:
        crops = torch.stack([self.clip.prepare(img, (self.size, self.size)) for img in images])
        cls, _ = self.clip.encode_crops(crops)
        return (self.clip.logit_scale * cls.float() @ self.text.T.to(cls.device)).cpu().numpy()

    def __call__(self, image: np.ndarray, masks: np.ndarray, classes) -> int:
        """``image`` RGB uint8 ``(S, S, 3)`` at CLIP's input size; ``masks`` float ``(K, S, S)`` in [0, 1] (hard
        or blurred); ``classes`` vocabulary indices ``(K,)``. Returns the image's reward (0..K)."""
        if not len(classes):
            return 0
        masked = np.rint(image[None].astype(np.float32) * np.asarray(masks, np.float32)[..., None]).astype(np.uint8)
        return reward_from_logits(self._logits(masked), self.black, classes, self.norm)


def grid_sample(space: dict[str, tuple], trials: int, seed: int) -> list[dict]:
    """``trials`` distinct points of the product grid ``space`` (name -> values), drawn without replacement
    with ``numpy.random.default_rng(seed)``; all points (in grid order) when there are fewer."""
    names = list(space)
    sizes = [len(space[n]) for n in names]
    total = int(np.prod(sizes))
    rng = np.random.default_rng(seed)
    picks = np.arange(total) if trials >= total else rng.choice(total, size=trials, replace=False)
    points = []
    for flat in picks.tolist():
        point = {}
        for name, size in zip(reversed(names), reversed(sizes)):
            flat, i = divmod(flat, size)
            point[name] = space[name][i]
        points.append({n: point[n] for n in names})
    return points


def random_search(space: dict[str, tuple], trials: int, seed: int, evaluate: Callable[[dict], float],
                  bar=None, phase: str = "search") -> list[dict]:
    """Evaluate ``trials`` seeded grid points; returns every trial as ``{**point, "reward", "phase"}`` in
    evaluation order. ``bar``: a tqdm bar advanced once per trial."""
    out = []
    for point in grid_sample(space, trials, seed):
        out.append({"phase": phase, **point, "reward": float(evaluate(point))})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best=max(t["reward"] for t in out), refresh=False)
    return out


def best_trial(trials: list[dict]) -> dict:
    """The first trial with the highest reward (ties keep the earlier trial: deterministic)."""
    return max(trials, key=lambda t: t["reward"]) if trials else {}
