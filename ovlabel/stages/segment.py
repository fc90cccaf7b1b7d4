"""``segment``: label new images with a trained alignment checkpoint and any class names (FMbSeg §3.3,
"Deployment").

Per image: frozen DINOv2 patch features at the checkpoint's resolution, the alignment module, cosine
similarity of every patch with the L2-normalised CLIP text feature of every class (checkpoint's
templates), similarities upsampled bilinearly to the full image ("we interpolate the similarities to the
original image dimension"), and each pixel takes its most similar class. With ``refine`` the class
probabilities ``softmax(similarity / temperature)`` (the training temperature) are refined by a dense CRF
first. The output is a run directory like pseudo-label's (one mask per predicted class per image, source
``segment``), written and resumed by the same machinery (:mod:`ovlabel.pipeline`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.artifacts import RunLayout, label_names
from ovlabel.config import CRFConfig, SegmentConfig
from ovlabel.crf import dense_crf
from ovlabel.errors import OvlabelError
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
        from ovlabel.stages.align import head_similarities

        with autocast(self.device, self.precision):
            sim = head_similarities(self.module, feats.reshape(1, grid[0] * grid[1], -1).to(self.device), self.text)
        return sim.reshape(-1, *grid)

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
        (``pipeline._label_images``'s contract; ``needs`` is always that one stage)."""
        out = []
        for image in images:
            labels, score = self.predict(image)
            present = np.unique(labels)
            dense = labels[None] == present[:, None, None]
            ms = MaskSet.from_dense(dense, present, score[present], SOURCE_SEGMENT)
            out.append(SimpleNamespace(masks={SOURCE_SEGMENT: ms}))
        return out


class _Lazy:
    """Loads the encoders, checkpoint and text features on first use (``pipeline._label_images``'s contract)."""

    def __init__(self, cfg: SegmentConfig, module, config: dict, specs: dict, vocab, templates, injected):
        from ovlabel.device import resolve_device, resolve_precision

        self.cfg, self.module, self.config, self.specs = cfg, module, config, specs
        self.vocab, self.templates, self.injected = vocab, templates, injected
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.stage = None

    def get(self) -> AlignedSegmenter:
        if self.stage is None:
            from ovlabel.stages.encoders import load_stage2
            from ovlabel.text import class_text_features

            vision = self.config["vision_encoder"].get("family", "dinov2")  # Stage 2 encoders: ovlabel.stages.encoders
            encoder, clip = load_stage2(self.specs, vision, self.device, self.precision, self.injected)
            _warn_if_other_weights(encoder.identity, self.config["vision_encoder"])
            _warn_if_other_weights(clip.identity, self.config["text_encoder"])
            text = class_text_features(clip, self.vocab, self.templates).to(self.device)
            self.clip = clip
            resolution = self.cfg.resolution or int(self.config["resolution"])
            self.stage = AlignedSegmenter(encoder, self.module.to(self.device), text, self.config, resolution, self.cfg.refine, self.precision)
        return self.stage

    def identities(self) -> dict | None:
        if self.stage is None:
            return None
        return {self.stage.encoder.identity["family"]: self.stage.encoder.identity, self.clip.identity["family"]: self.clip.identity}

    def stats(self) -> dict:
        return dict(self.stage.encoder.stats) if self.stage else {}


def _warn_if_other_weights(loaded: dict, trained: dict) -> None:
    import sys

    if loaded.get("sha256") != trained.get("sha256") or loaded.get("arch") != trained.get("arch"):
        print(
            f"warning: {loaded.get('spec')} is not the model the checkpoint was trained with "
            f"({trained.get('spec')}, sha256 {str(trained.get('sha256'))[:12]}); the labels may be meaningless",
            file=sys.stderr,
        )


def run(inputs: str | Path, out: str | Path, cfg: SegmentConfig, models: dict | None = None):
    """Segment every image under ``inputs`` into the run directory ``out`` with ``cfg.classes``.

    ``models`` may inject ready ``{"dinov2": ..., "clip": ...}``. Returns a :class:`ovlabel.pipeline.RunSummary`.
    """
    from ovlabel.cache import file_sha256
    from ovlabel.io.images import discover_images
    from ovlabel.io.lock import remove_stale_temps, run_lock
    from ovlabel.pipeline import RunSummary, _label_images, _PartStore, check_output_dir, settings_key
    from ovlabel.runinfo import finalize, recompute_reasons, start_run_json
    from ovlabel.stages.align import WEIGHTS_FILE, load_checkpoint
    from ovlabel.stages.encoders import checkpoint_specs, model_names
    from ovlabel.vocab import Templates, load_templates, load_vocabulary

    if not cfg.classes.strip():
        raise OvlabelError("no classes given: pass --classes as a comma list ('rocket,bridge'), a class file or a preset")
    vocab = load_vocabulary(cfg.classes)
    module, config = load_checkpoint(cfg.checkpoint, "cpu")
    if cfg.templates:
        templates = load_templates(cfg.templates)
    else:
        templates = Templates(name=config["templates"]["name"], templates=tuple(config["templates"]["templates"]))
    specs = checkpoint_specs(config, cfg.dinov2, cfg.clip)  # the families the checkpoint's head was trained on
    names = model_names(specs, models)
    lazy = _Lazy(cfg, module, config, specs, vocab, templates, models)
    out = Path(out).expanduser().resolve()
    layout = RunLayout(out)
    source = discover_images(inputs, exclude=out)
    check_output_dir(out, source.root, source.kind)
    weights = Path(cfg.checkpoint).expanduser().resolve() / WEIGHTS_FILE
    settings = {
        "stages": ["segment"],
        "vocabulary": vocab.to_json(),
        "templates": templates.to_json(),
        "models": names,
        # the weights' digest, not their folder: a moved checkpoint still resumes (the folder is recorded
        # in run.json's last_invocation.parameters)
        "checkpoint": {"sha256": file_sha256(weights), "epoch": config.get("epoch")},
        "segment": {
            "resolution": cfg.resolution or int(config["resolution"]), "max_aspect": config["max_aspect"],
            "temperature": config["temperature"], "refine": cfg.refine, "crf": asdict(CRFConfig()) if cfg.refine else None,
        },
    }
    key = settings_key(settings)
    stage_keys = {SOURCE_SEGMENT: key}
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "segment"):  # the same run-directory protocol as pseudo-label (see pipeline.run)
        prev = layout.read_run_json()
        trusted = bool(prev) and prev.get("status") == "complete"
        if not trusted:
            remove_stale_temps(out)  # left by a killed predecessor
        reasons = recompute_reasons(prev, settings, key, stage_keys, cfg, (), out)
        if cfg.overwrite:
            shutil.rmtree(layout.parts / key, ignore_errors=True)
        start_run_json(layout, prev, inputs, source, settings, key, stage_keys, command="segment")
        summary = RunSummary(out=out, total=len(source.entries), reasons=reasons)
        names_png = label_names([e.rel for e in source.entries])
        store = _PartStore(layout, stage_keys)
        rows = _label_images(store, source.entries, names_png, cfg, lazy, summary, desc="segment")
        summary.stats = lazy.stats()
        finalize(layout, key, store, source, rows, vocab, settings, lazy, cfg, summary, trusted=trusted)
    return summary

