"""``segment``: label new images with a trained alignment checkpoint and any class names (FMbSeg §3.3,
"Deployment").

Per image: frozen DINOv2 patch features at the checkpoint's resolution, the alignment module, cosine
similarity of every patch with the L2-normalised CLIP text feature of every class (checkpoint's
templates), similarities upsampled bilinearly to the full image ("we interpolate the similarities to the
original image dimension"), and each pixel takes its most similar class. By default under FMbSeg's
evaluation protocol (§4.1, TCL's): short side, sliding window, and a class named ``background`` predicted by
the COCO-Stuff stuff classes; ``--protocol`` applies another preset (:mod:`ovlabel.stages.segment_infer`).
With ``refine`` the class probabilities ``softmax(similarity / temperature)`` (the training temperature)
are refined by a dense CRF first. The output is a run directory like pseudo-label's (one mask per predicted
class per image, source ``segment``), written and resumed by the same machinery (:mod:`ovlabel.pipeline`).
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
UNLABELED = 255

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
    """Encoder + alignment module + class text features -> label maps. ``text``: float32 ``(Q, D)``
    L2-normalised on the module's device, one row per prompted query.

    ``inference`` (:class:`ovlabel.stages.segment_infer.SegmentInference`) and ``owner`` (int64 ``(Q,)``, the
    label each query predicts, 255 = unlabeled) apply an evaluation protocol: short side, sliding window,
    background prompts and thresholds (:mod:`ovlabel.stages.segment_infer`). Without them every query is its
    own class and the whole image is encoded at ``resolution`` (ovlabel's earlier behaviour).
    """

    def __init__(self, encoder, module, text: torch.Tensor, config: dict, resolution: int, refine: bool, precision: str,
                 inference=None, owner: np.ndarray | None = None):
        self.encoder, self.module, self.text = encoder, module, text
        self.resolution = resolution
        self.max_aspect = float(config["max_aspect"])
        self.temperature = float(config["temperature"])
        self.refine = refine
        self.precision = precision
        self.device = text.device
        self.inference = inference
        self.owner = np.arange(len(text), dtype=np.int64) if owner is None else np.asarray(owner, np.int64)

    @torch.inference_mode()
    def similarities(self, image: np.ndarray) -> torch.Tensor:
        """Cosine similarity of each patch with each query: float32 ``(Q, rows, cols)``; the whole image at
        ``resolution`` (:func:`ovlabel.features.patch_grid`)."""
        h, w = image.shape[:2]
        return self._similarities(image, patch_grid(h, w, self.resolution, self.encoder.patch_size, self.max_aspect))

    @torch.inference_mode()
    def window_similarities(self, crop: np.ndarray) -> torch.Tensor:
        """As :meth:`similarities` for one sliding window, encoded at its own size rounded to whole patches."""
        p = self.encoder.patch_size
        h, w = crop.shape[:2]
        return self._similarities(crop, (max(1, round(h / p)), max(1, round(w / p))))

    def _similarities(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        from ovlabel.device import autocast

        feats = self.encoder.encode(self.encoder.prepare(image, grid)[None])  # (1, rows, cols, D)
        with autocast(self.device, self.precision):
            z = self.module(feats.reshape(1, grid[0] * grid[1], -1).to(self.device))[0]
        z = F.normalize(z.float(), dim=-1)
        return (self.text @ z.T).reshape(-1, *grid)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels int64 (H, W), score float32 (C,))``: the class of every pixel (255 = unlabeled, only under a
        background rule without a background class), and per class the mean over its pixels of its
        similarity (CRF marginal with ``refine``); 0 for absent classes. C = the largest owned label + 1."""
        from ovlabel.stages.segment_infer import decide, sliding_similarities

        h, w = image.shape[:2]
        inf = self.inference
        if inf is not None and inf.window > 0:
            sim = sliding_similarities(image, inf, self.window_similarities)
        else:
            sim = self.similarities(image)
        labeled = self.owner[self.owner != UNLABELED]
        c = int(labeled.max()) + 1 if len(labeled) else 0
        if self.refine:
            labels, value = self._refine(image, sim)
        elif inf is None:
            lab, best = upsampled_argmax(sim, h, w)
            labels, value = self.owner[lab.cpu().numpy()], best.cpu().numpy()
        else:
            lab, best = decide(sim, self.owner, inf, h, w)
            labels, value = lab.cpu().numpy(), best.cpu().numpy()
        flat, val = labels.ravel(), value.ravel().astype(np.float64)
        ok = flat != UNLABELED
        counts = np.bincount(flat[ok], minlength=c)[:c]
        sums = np.bincount(flat[ok], weights=val[ok], minlength=c)[:c]
        return labels, (sums / np.maximum(counts, 1)).astype(np.float32)

    def _refine(self, image: np.ndarray, sim: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Dense CRF on ``softmax(similarity / temperature)`` of the labels (each label's best query)."""
        h, w = image.shape[:2]
        owners = np.unique(self.owner)
        own = torch.as_tensor(self.owner, device=sim.device)
        per_label = torch.stack([sim[own == o].amax(dim=0) for o in owners.tolist()])
        up = F.interpolate(per_label[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = torch.softmax(up / self.temperature, dim=0).cpu().numpy()
        q = dense_crf(image, probs, CRFConfig())  # CutLER's defaults, as refine
        best = q.argmax(axis=0)
        return owners[best], np.take_along_axis(q, best[None], axis=0)[0]

    def process(self, images: list[np.ndarray], needs=None) -> list[SimpleNamespace]:
        """One result per image whose ``.masks`` is ``{"segment": MaskSet}``: one mask per predicted class
        (``pipeline._label_images``'s contract; ``needs`` is always that one stage)."""
        out = []
        for image in images:
            labels, score = self.predict(image)
            present = np.unique(labels)
            present = present[present != UNLABELED]
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
            from ovlabel.models.registry import load_model
            from ovlabel.text import class_text_features

            if self.injected:
                encoder, clip = self.injected["dinov2"], self.injected["clip"]
            else:
                encoder = load_model(self.specs["dinov2"], self.device, self.precision)
                clip = load_model(self.specs["clip"], self.device, self.precision)
            _warn_if_other_weights(encoder.identity, self.config["vision_encoder"])
            _warn_if_other_weights(clip.identity, self.config["text_encoder"])
            from ovlabel.stages.segment_infer import queries, resolve

            inf = resolve(self.cfg, self.vocab, self.config)
            prompted, owner = queries(self.vocab, inf)
            text = class_text_features(clip, prompted, self.templates).to(self.device)
            self.clip = clip
            self.stage = AlignedSegmenter(encoder, self.module.to(self.device), text, self.config, inf.resolution,
                                          self.cfg.refine, self.precision, inf, owner)
        return self.stage

    def identities(self) -> dict | None:
        if self.stage is None:
            return None
        return {"dinov2": self.stage.encoder.identity, "clip": self.clip.identity}

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
    from ovlabel.models.registry import parse_model
    from ovlabel.pipeline import RunSummary, _label_images, _PartStore, check_output_dir, settings_key
    from ovlabel.runinfo import finalize, recompute_reasons, start_run_json
    from ovlabel.stages.align import WEIGHTS_FILE, load_checkpoint
    from ovlabel.vocab import Templates, load_templates, load_vocabulary

    if not cfg.classes.strip():
        raise OvlabelError("no classes given: pass --classes as a comma list ('rocket,bridge'), a class file or a preset")
    from ovlabel.stages.segment_infer import resolve

    vocab = load_vocabulary(cfg.classes)
    module, config = load_checkpoint(cfg.checkpoint, "cpu")
    inference = resolve(cfg, vocab, config)
    if cfg.templates:
        templates = load_templates(cfg.templates)
    else:
        templates = Templates(name=config["templates"]["name"], templates=tuple(config["templates"]["templates"]))
    if models:
        specs, names = {}, {f: m.identity["spec"] for f, m in models.items()}
    else:
        specs = {
            "dinov2": parse_model(cfg.dinov2 or config["vision_encoder"]["spec"], "dinov2"),
            "clip": parse_model(cfg.clip or config["text_encoder"]["spec"], "clip"),
        }
        names = {f: s.name for f, s in specs.items()}
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
            "resolution": inference.resolution, "inference": inference.to_json(), "max_aspect": config["max_aspect"],
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

