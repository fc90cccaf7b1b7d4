"""``tune``: search PnP-OVSS's layer, head, threshold and blur std without labels on a run or a folder of
images, and write the parameter file ``salience --params`` reads. The reward and the search are
:mod:`ovlabel.stages.tune` (seed 004 §3.4, §4.1, §9)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

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
from ovlabel.stages.tune import ClipReward, best_trial, random_search

#: ``format`` of the parameter file ``tune`` writes and ``salience --params`` reads.
PARAMS_FORMAT = "ovlabel-salience-params/1"


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
    from ovlabel.labelling.salience import resolve_inputs
    from ovlabel.models.registry import load_model, resolve_models
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
    from ovlabel.models.offline import require_weights

    require_weights({f: s for f, s in specs.items() if {"blip": blip, "clip": clip}[f] is None}, "tune")
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
        for _item, _small, pixels, prompt, _ in images:
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
    from ovlabel.io.text import read_user_text

    try:
        doc = json.loads(read_user_text(path, "--params file"))
    except ValueError as exc:
        raise OvlabelError(f"--params file '{path}' is not JSON: {exc}") from None
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or doc.get("format") != PARAMS_FORMAT:
        raise OvlabelError(f"--params '{path}' is not a parameter file written by `ovlabel tune` ({PARAMS_FORMAT})")
    unknown = set(params) - {"layer", "head", "threshold", "blur_sigma"}
    if unknown:
        raise OvlabelError(f"--params '{path}' has unknown parameters {sorted(unknown)}")
    return params
