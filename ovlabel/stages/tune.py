"""``tune``: label-free hyper-parameter search of PnP-OVSS (seed 004 §3.4, Eq. 6–7; §4.1; §9).

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

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ovlabel.config import CRFConfig
from ovlabel.crf import blurred_channels
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.salience_config import (
    REWARD_CLIP,
    SEARCH_HEADS,
    SEARCH_LAYERS,
    SEARCH_SIGMAS,
    SEARCH_THRESHOLDS,
    SalienceConfig,
    TuneConfig,
)
from ovlabel.stages.salience import class_maps, gradcam, thresholded_maps, upsample

#: ``format`` of the parameter file ``tune`` writes and ``salience --params`` reads.
PARAMS_FORMAT = "ovlabel-salience-params/1"


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


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def tune(inputs, out_file, cfg: TuneConfig, blip=None, clip=None) -> dict:
    """Search PnP-OVSS's layer, head, threshold and blur std on ``inputs`` (images with ``cfg.vocab``, or a run
    directory with its detected classes) and write the parameter file ``out_file`` (JSON: ``params``, the
    best ``reward`` and ``max_reward``, every trial). ``blip``/``clip`` may inject ready models. Returns the
    document written."""
    from tqdm import tqdm

    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.models.registry import load_model, resolve_models
    from ovlabel.labelling.salience import resolve_inputs
    from ovlabel.stages.salience import SalienceExtractor
    from ovlabel.text import class_text_features
    from ovlabel.vocab import load_templates

    res, vocab, classes_from = resolve_inputs(inputs, cfg.vocab, cfg.images)
    if len(vocab) < 2:
        raise OvlabelError("tune needs a vocabulary of at least 2 classes: the reward's class probability (seed 004 "
                           "Eq. 7) is normalised over several classes, so with one class it is always 1")
    templates = load_templates(cfg.templates)
    items = [it for it in res.items if it.classes and not it.reason]
    if not items:
        raise OvlabelError(f"no image of '{inputs}' has classes to score")
    if cfg.reward_norm == "image" and all(len(it.classes) < 2 for it in items):
        raise OvlabelError(f"every image of '{inputs}' has a single class: the reward normalises over an image's own "
                           "classes (as PnP-OVSS's released search), so a one-class image never scores; give images "
                           "with several classes, or --reward-norm vocabulary")
    if len(items) > cfg.max_images:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(items), size=cfg.max_images, replace=False))
        items = [items[i] for i in pick]
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    clip_spec = cfg.clip or REWARD_CLIP.get(cfg.models)
    specs = resolve_models(cfg.models, {"blip": cfg.blip, "clip": clip_spec}, families=("blip", "clip"))
    blip = blip or load_model(specs["blip"], device, precision)
    clip = clip or load_model(specs["clip"], device, precision)
    reward = ClipReward(clip, class_text_features(clip, vocab, templates), cfg.reward_norm)
    layers = tuple(x for x in SEARCH_LAYERS if x <= blip.num_layers)
    heads = tuple(x for x in SEARCH_HEADS if x <= blip.num_heads)
    base = SalienceConfig(resolution=cfg.resolution, rounds=cfg.rounds, drop_patches=cfg.drop_patches,
                          itm_token=cfg.itm_token)
    extractor = SalienceExtractor(blip, base)
    g, size = extractor.grid, reward.size

    images, skipped = [], []
    for item in tqdm(items, desc="tune: BLIP maps", unit="img", disable=not cfg.progress, dynamic_ncols=True):
        try:
            image = decode_image(read_file(item.path)[0])
        except ImageDecodeError as exc:
            skipped.append((item.file, str(exc)))
            continue
        names = [vocab.names[c] for c in item.classes]
        prompt = blip.prompt(names, cfg.itm_token)
        with torch.inference_mode():
            pixels = extractor.prepare([image])
        captured = blip.attention_and_gradients(pixels, [prompt], [x - 1 for x in layers])
        cams = np.stack([  # (layers, heads, K, g, g)
            np.stack([class_maps(gradcam(*captured[x - 1], h)[0], prompt.spans).reshape(-1, g, g).cpu().numpy()
                      for h in heads]) for x in layers])
        images.append((item, _resize(image, size), pixels, prompt, cams))
    if not images:
        raise OvlabelError(f"none of the {len(items)} images could be read: {skipped[0][1]}")
    max_reward = sum(len(it.classes) for it, *_ in images)

    def gradcam_reward(p: dict) -> int:
        total = 0
        for item, small, _, _, cams in images:
            maps = cams[layers.index(p["layer"]), heads.index(p["head"])]
            masks = (upsample(thresholded_maps(maps, p["threshold"]), size, size) > 0).astype(np.float32)
            total += reward(small, masks, item.classes)
        return total

    n_sigma = min(cfg.sigma_trials, len(SEARCH_SIGMAS))
    bar = tqdm(total=min(cfg.trials, len(layers) * len(heads) * len(SEARCH_THRESHOLDS)) + n_sigma, unit="trial",
               desc="tune", disable=not cfg.progress, dynamic_ncols=True)
    space = {"layer": layers, "head": heads, "threshold": SEARCH_THRESHOLDS}
    trials = random_search(space, cfg.trials, cfg.seed, gradcam_reward, bar, phase="gradcam")
    best = best_trial(trials)
    params = {k: best[k] for k in ("layer", "head", "threshold")}
    if n_sigma:
        kept = []
        for item, _small, pixels, prompt, _ in images:
            maps = extractor.maps(pixels, [prompt], layer=params["layer"], head=params["head"])[0]
            kept.append(upsample(thresholded_maps(maps, params["threshold"]), size, size))

        def blur_reward(p: dict) -> int:
            crf = CRFConfig(blur_sigma=p["blur_sigma"])
            return sum(reward(small, blurred_channels(up, crf), item.classes)
                       for (item, small, *_), up in zip(images, kept))

        sig = random_search({"blur_sigma": SEARCH_SIGMAS}, n_sigma, cfg.seed, blur_reward, bar, phase="blur")
        trials += [{**params, **t} for t in sig]
        best = best_trial(sig)
        params["blur_sigma"] = best["blur_sigma"]
    bar.close()
    from ovlabel import __version__

    doc = {
        "format": PARAMS_FORMAT, "params": params, "reward": best["reward"], "max_reward": max_reward,
        "trials": trials, "seed": cfg.seed, "images": [it.file for it, *_ in images], "skipped": skipped,
        "vocabulary": vocab.source, "classes_from": classes_from,
        "models": {"blip": blip.identity, "clip": clip.identity},
        "settings": {"resolution": cfg.resolution, "rounds": cfg.rounds, "drop_patches": cfg.drop_patches,
                     "itm_token": cfg.itm_token, "reward_norm": cfg.reward_norm, "templates": cfg.templates,
                     "trials": cfg.trials, "sigma_trials": n_sigma},
        "ovlabel_version": __version__, "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    write_json(Path(out_file).expanduser(), doc)
    return doc


def load_params(path) -> dict:
    """The ``params`` of a file written by :func:`tune` (keys among layer, head, threshold, blur_sigma).
    Raises OvlabelError for a missing or foreign file."""
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OvlabelError(f"cannot read --params '{path}': {exc}") from None
    params = doc.get("params") if isinstance(doc, dict) else None
    if doc.get("format") != PARAMS_FORMAT or not isinstance(params, dict):
        raise OvlabelError(f"--params '{path}' is not a parameter file written by `ovlabel tune` ({PARAMS_FORMAT})")
    unknown = set(params) - {"layer", "head", "threshold", "blur_sigma"}
    if unknown:
        raise OvlabelError(f"--params '{path}' has unknown parameters {sorted(unknown)}")
    return params
