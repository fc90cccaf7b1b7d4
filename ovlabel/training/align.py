"""``train-align``: train FMbSeg's alignment module (seed 003 §3.3) on a pseudo-label run, encoders frozen.

``--head fusioner`` trains Fusioner's fusion module instead (seed 000; :mod:`ovlabel.stages.fusioner`:
AdamW and a cross-entropy over the classes, same data, batches, features and checkpoints), and the
encoders may be CLIP's image tower or a BERT-style text model (:mod:`ovlabel.stages.encoders`).

Each step takes ``batch_size`` images (FMbSeg §4.1: 5), reads their frozen DINOv2 patch features (from
the fp16 feature cache, computing and storing the missing ones), runs the module over each image's
patches, and minimises :func:`ovlabel.loss.fmbseg_loss` over every labelled patch of the batch against
the CLIP text features of the classes present in the run. SGD with cosine annealing over all steps.

A checkpoint is written after every epoch (atomically). The image order of epoch ``e`` is a permutation
drawn from a generator seeded with ``(seed, e)`` and the module has no dropout, so ``--resume`` from the
state of epoch ``e`` (weights, SGD momentum, scheduler) continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ovlabel import __version__
from ovlabel.config import TrainAlignConfig
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.features import FeatureCache, default_feature_root, extract_features, pad_batch
from ovlabel.io.atomic import atomic_path, write_json
from ovlabel.io.images import decode_image, read_file
from ovlabel.loss import fmbseg_loss
from ovlabel.stages import align as ck
from ovlabel.stages.trainset import load_train_set


@dataclass
class TrainSummary:
    out: Path
    epochs_done: int = 0
    epochs: int = 0
    resumed_from: int = 0
    images: int = 0
    history: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    features_computed: int = 0
    feature_cache_hits: int = 0

    def describe(self) -> str:
        last = self.history[-1]["loss"] if self.history else float("nan")
        return (
            f"{self.images} images, epoch {self.epochs_done}/{self.epochs} (resumed from {self.resumed_from}), "
            f"last epoch loss {last:.4f}, {len(self.failures)} images skipped; features computed "
            f"{self.features_computed}, read from cache {self.feature_cache_hits} -> {self.out}"
        )


def _settings_key(settings: dict) -> str:
    from ovlabel.provenance import settings_key

    return settings_key(settings)


def _check_out(out: Path, resume: bool) -> dict | None:
    """The resumable state's metadata in ``out``, or None; refuses to clobber a checkpoint or a foreign folder."""
    if out.exists() and not out.is_dir():
        raise OvlabelError(f"--out '{out}' exists and is a file; give a folder")
    state = out / ck.STATE_FILE
    if state.is_file():
        if not resume:
            raise OvlabelError(
                f"'{out}' already holds an alignment checkpoint; pass --resume to continue its training, "
                f"or choose another --out"
            )
        from safetensors import safe_open

        from ovlabel.models.checkpoint import first_line

        try:
            with safe_open(str(state), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            int(meta["epoch"]), json.loads(meta["settings"])
        except Exception as exc:
            raise OvlabelError(f"cannot resume from '{state}': not a readable training state ({first_line(exc)}); "
                               f"expected the {ck.STATE_FILE} that `ovlabel train-align` writes. Remove it to "
                               f"train from the start (the finished epochs are lost), or restore it") from None
        return meta
    if out.is_dir() and any(out.iterdir()):
        raise OvlabelError(f"--out '{out}' is a non-empty folder that is not an ovlabel checkpoint; choose a new or empty folder")
    return None


def train(run_dir: str | Path, out: str | Path, cfg: TrainAlignConfig, models: dict | None = None) -> TrainSummary:
    """Train the alignment module on the run in ``run_dir``; write the checkpoint folder ``out``.

    ``models`` may inject ready models ``{"dinov2": DinoV2Model, "clip": ClipModel}`` (tests, notebooks).
    Raises :class:`OvlabelError` for bad input; an image that cannot be read (or whose bytes changed
    since it was labelled) is skipped with a warning.
    """
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.stages.encoders import load_stage2, model_names, stage2_specs, text_family
    from ovlabel.stages.trainset import read_run

    out = Path(out).expanduser().resolve()
    _, run = read_run(run_dir)
    run_clip = (run.get("settings", {}).get("models") or {}).get("clip")
    clip_name = cfg.clip or run_clip or (models["clip"].identity["spec"] if models and "clip" in models else None)
    if not clip_name and (cfg.vision_encoder == "clip" or text_family(cfg.text_encoder) == "clip"):
        raise OvlabelError(f"run '{run_dir}' does not record its CLIP model; pass --clip")
    specs = stage2_specs(cfg.models, cfg.vision_encoder, cfg.text_encoder, cfg.dinov2, clip_name)
    if not models:  # every missing weight named now, before anything is loaded
        from ovlabel.models.offline import require_weights

        require_weights(specs, "train-align")
    names = model_names(specs, models)
    settings = {
        "run": {"path": str(Path(run_dir).expanduser().resolve()), "settings_key": run.get("settings_key")},
        "models": names, "params": cfg.result_params(), "format_version": ck.CHECKPOINT_VERSION,
    }
    key = _settings_key(settings)
    meta = _check_out(out, cfg.resume)
    start = 0
    if meta is not None:
        old = json.loads(meta.get("settings", "{}"))
        if meta.get("settings_key") != key:
            changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if old.get("params") != settings["params"]:
                changed += [f"params.{k}" for k in sorted(settings["params"]) if old.get("params", {}).get(k) != settings["params"][k]]
            raise OvlabelError(
                f"cannot resume '{out}': it was trained with different settings (changed: {', '.join(changed)}); "
                f"resume with the same options, or choose another --out"
            )
        start = int(meta["epoch"])
    summary = TrainSummary(out=out, epochs=cfg.epochs, resumed_from=start, epochs_done=start)
    if meta is not None:
        summary.history = json.loads(meta.get("history", "[]"))
        if start >= cfg.epochs:
            return summary
    elif cfg.resume:
        print(f"note: nothing to resume in '{out}'; starting a new training", file=sys.stderr)

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    encoder, clip = load_stage2(specs, cfg.vision_encoder, device, precision, models)  # clip: the text model
    data = load_train_set(
        run_dir, cfg.resolution, encoder.patch_size, cfg.max_aspect, cfg.min_labelled, cfg.images,
        progress=cfg.progress,
    )
    from ovlabel.text import class_text_features

    all_text = class_text_features(clip, data.vocab, data.templates).to(device)
    text_identity = clip.identity
    del clip  # the text encoder is not needed any more (frees its memory when we loaded it)
    counts = data.class_counts()
    used = np.flatnonzero(counts > 0)  # "the detected categories in the dataset" (§3.3)
    lut = np.full(len(data.vocab) + 1, -1, np.int64)
    lut[used] = np.arange(len(used))
    text = all_text[torch.as_tensor(used, device=device)]
    summary.images = len(data.images)

    module, opt = _build_head(cfg, encoder.embed_dim, int(text.shape[1]), device)
    steps_per_epoch = math.ceil(len(data.images) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    if meta is not None:
        _load_state(out / ck.STATE_FILE, module, opt, sched, device)

    root = None if cfg.feature_cache == "none" else (cfg.feature_cache or default_feature_root())
    cache = FeatureCache(root, encoder.cache_key)
    bad: dict[str, str] = {}
    config = {
        "format": ck.CHECKPOINT_FORMAT, "format_version": ck.CHECKPOINT_VERSION, "head": cfg.head, "module": module.dims(),
        "vision_encoder": encoder.identity, "text_encoder": text_identity, "templates": data.templates.to_json(),
        "resolution": cfg.resolution, "max_aspect": cfg.max_aspect, "patch_size": encoder.patch_size,
        "temperature": cfg.temperature,
    }
    prov = _provenance(out, settings, key, data, used, cache, cfg, device, precision)
    from tqdm import tqdm

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data.images))
        bar = tqdm(total=steps_per_epoch, desc=f"train-align {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
        sums = np.zeros(3)
        steps = 0
        for s in range(steps_per_epoch):
            batch = [data.images[i] for i in order[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
            feats, labels = _batch_features(batch, encoder, cache, bad, summary, cfg, device)
            loss, parts = _step(module, opt, feats, labels, lut, text, cfg.temperature, device, precision,
                                cfg.loss_norm)
            if loss is not None:  # a batch without two labelled patches (unreadable images) is no step
                sched.step()
                sums += (loss, parts["patch_text"], parts["patch_patch"])
                steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / max(steps, 1):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
        bar.close()
        if steps == 0:
            raise OvlabelError(
                f"epoch {epoch + 1} ran no training step: {len(bad)} of {len(data.images)} images could not be read "
                f"(first: {next(iter(bad.items()), ('-', '-'))}); pass --images if the run's images moved"
            )
        mean = sums / steps
        summary.history.append({
            "epoch": epoch + 1, "loss": float(mean[0]), "patch_text": float(mean[1]), "patch_patch": float(mean[2]),
            "steps": steps, "lr_end": float(sched.get_last_lr()[0]), "seconds": round(time.perf_counter() - t0, 3),
        })
        summary.epochs_done = epoch + 1
        _save(out, module, opt, sched, config | {"epoch": epoch + 1, "epochs": cfg.epochs}, settings, key, summary)
        prov.update({"updated": _now(), "status": "complete" if epoch + 1 == cfg.epochs else "running",
                     "epochs_done": epoch + 1, "history": summary.history,
                     "skipped_images": sorted(bad.items()) + data.skipped})
        write_json(out / ck.PROVENANCE_FILE, prov)
    summary.failures = sorted(bad.items())
    summary.feature_cache_hits = cache.hits
    return summary


def _build_head(cfg: TrainAlignConfig, visual_dim: int, text_dim: int, device):
    """The module of ``cfg.head`` (seeded) and its optimizer: SGD for FMbSeg's alignment module, AdamW for
    Fusioner's fusion module (:func:`ovlabel.stages.fusioner.optimizer`)."""
    if cfg.head == "fusioner":
        from ovlabel.stages import fusioner

        dims = {"visual_dim": visual_dim, "text_dim": text_dim, "width": cfg.fusion_width,
                "layers": cfg.fusion_layers, "heads": cfg.fusion_heads, "mlp_ratio": 4.0}
        module = fusioner.build(dims, cfg.seed).to(device)
        return module, fusioner.optimizer(module, cfg.fusion_lr, cfg.fusion_weight_decay)
    dims = {"in_dim": visual_dim, "out_dim": text_dim, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio}
    module = ck.build_module(dims, cfg.seed).to(device)
    return module, torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _batch_features(batch, encoder, cache: FeatureCache, bad: dict, summary: TrainSummary, cfg, device):
    """Features (list of float32 ``(rows, cols, D)`` on ``device``) and label arrays of the readable
    images of ``batch``; computes and caches missing features in one encoder call per grid."""
    feats, labels, todo = {}, {}, []
    for im in batch:
        if im.file in bad:
            continue
        arr = cache.load(im.sha256, im.grid)
        if arr is not None:
            feats[im.file] = torch.from_numpy(arr).to(device).float()
            labels[im.file] = im.labels
            continue
        try:
            raw, sha = read_file(im.path)
            if sha != im.sha256:
                raise ImageDecodeError("the file changed since it was pseudo-labelled (content hash differs)")
            todo.append((im, decode_image(raw, max_pixels=None)))  # labelled by its run: its limit applied there
        except ImageDecodeError as exc:
            bad[im.file] = str(exc)
            print(f"warning: skipping {im.file}: {exc}", file=sys.stderr)
    if todo:
        out = extract_features(encoder, [img for _, img in todo], [im.grid for im, _ in todo], cfg.encoder_batch)
        for (im, _), f in zip(todo, out):
            half = f.to(torch.float16)
            cache.save(im.sha256, im.grid, half.cpu().numpy())
            feats[im.file] = half.float()  # the cached (fp16) values, so a cache hit trains identically
            labels[im.file] = im.labels
            summary.features_computed += 1
    keep = [im.file for im in batch if im.file in feats]
    return [feats[f] for f in keep], [labels[f] for f in keep]


def _step(module, opt, feats, labels, lut, text, temperature, device, precision, loss_norm="batch"):
    """One optimizer step; returns ``(loss, parts)`` or ``(None, None)`` when the batch has < 2 labelled patches.
    ``loss_norm``: :func:`ovlabel.loss.fmbseg_loss`'s normalisation (B·N = every patch of the batch; the
    FMbSeg head only)."""
    from ovlabel.device import autocast

    if getattr(module, "head", "fmbseg") == "fusioner":
        from ovlabel.stages.fusioner import train_step

        return train_step(module, opt, feats, labels, lut, text, temperature, device, precision)

    lab = np.concatenate([lut[np.where(x >= 0, x, len(lut) - 1)] for x in labels]) if labels else np.zeros(0, np.int64)
    if (lab >= 0).sum() < 2:
        return None, None
    x, valid = pad_batch(feats, device)
    module.train()
    with autocast(device, precision):
        z = module(x, valid if len(feats) > 1 else None)
    z = z[valid].float()  # (sum N_i, D) in image order, matching ``lab``
    sel = torch.as_tensor(lab >= 0, device=device)
    y = torch.as_tensor(lab, device=device)[sel]
    loss, parts = fmbseg_loss(z[sel], y, text, temperature, loss_norm, total_patches=len(lab))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), parts


def _save(out: Path, module, opt, sched, config: dict, settings: dict, key: str, summary: TrainSummary) -> None:
    """The resumable state first, then the weights + config that ``segment`` reads; each atomic."""
    from safetensors.torch import save_file

    tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val.detach().cpu().contiguous()
    meta = {
        "epoch": str(config["epoch"]), "settings_key": key, "settings": json.dumps(settings, sort_keys=True),
        "optimizer_param_groups": json.dumps(osd["param_groups"]), "scheduler": json.dumps(sched.state_dict()),
        "history": json.dumps(summary.history),
    }
    with atomic_path(out / ck.STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    ck.save_weights(out, module, config)


def _load_state(path: Path, module, opt, sched, device) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ovlabel.models.checkpoint import first_line

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(device)
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta["optimizer_param_groups"])})
        sched.load_state_dict(json.loads(meta["scheduler"]))
    except Exception as exc:
        raise OvlabelError(f"cannot resume from '{path}': its training state does not fit this training "
                           f"({first_line(exc)}); expected the {ck.STATE_FILE} of the same settings. Remove it to "
                           f"train from the start, or restore it") from None


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _provenance(out, settings, key, data, used, cache, cfg, device, precision) -> dict:
    prev = {}
    try:
        prev = json.loads((out / ck.PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    from ovlabel.provenance import versions as _versions

    return prev | {
        "ovlabel_version": __version__, "command": "train-align", "argv": sys.argv,
        "created": prev.get("created") or _now(), "settings_key": key, "settings": settings,
        "run_vocabulary": data.vocab.to_json(),
        "classes_trained": [data.vocab.names[i] for i in used],
        "counts": {"images": len(data.images), "labelled_patches": int(data.class_counts().sum()),
                   "images_without_labels": len(data.skipped)},
        "feature_cache": cache.describe(),
        "last_invocation": {"parameters": asdict(cfg), "device": str(device), "precision": precision, "versions": _versions()},
    }
