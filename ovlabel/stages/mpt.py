"""``train-mpt``: OVSeg's mask prompt tuning (seed 002 §3.3, §4.1) on a pseudo-label run.

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
(:func:`ovlabel.models.clip_mpt.mask_crops`). Optimiser as in §4.1: AdamW, lr 2e-2, weight decay 0, cosine
annealing over all steps, batch 256, 5 epochs, prompt depth 3. The checkpoint (``CKPT/mpt.safetensors`` +
``config.json``, written after every epoch; ``train.json`` provenance) is read by the classifier through
``ClassifyConfig.mpt``.
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
import torch.nn.functional as F

from ovlabel.config.mpt import MptConfig
from ovlabel.errors import ImageDecodeError, OvlabelError


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


def collect_crops(run_dir, size: int, patch: int, fill, cfg: MptConfig, progress: bool = False) -> CropSet:
    """The training crops of a run (see the module docstring)."""
    from ovlabel.artifacts import read_manifest, read_masks
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.models.clip_mpt import mask_crops
    from ovlabel.stages.classify import masked_crops
    from ovlabel.stages.trainset import read_run

    layout, run = read_run(run_dir)
    root = Path(cfg.images).expanduser().resolve() if cfg.images else Path(run["input"]["root"])
    rows = {r["image_id"]: r for r in read_manifest(layout.manifest) if r["status"] == "ok"}
    masks = {i: ms for i, ms in read_masks(layout.masks).items() if i in rows and len(ms)}
    picks: dict[int, list[int]] = {}
    for iid, j in select_masks(masks, cfg.fraction, cfg.max_crops):
        picks.setdefault(iid, []).append(j)
    crops, keeps, labels, scores, skipped = [], [], [], [], []
    from tqdm import tqdm

    for iid in tqdm(sorted(picks), desc="masked crops", unit="img", disable=not progress, dynamic_ncols=True):
        r = rows[iid]
        try:
            raw, sha = read_file(root / r["file"])
            if sha != r["sha256"]:
                raise ImageDecodeError("the file changed since it was pseudo-labelled (content hash differs)")
            image = decode_image(raw)
        except (ImageDecodeError, OSError) as exc:
            skipped.append((r["file"], str(exc)))
            print(f"warning: skipping {r['file']}: {exc}", file=sys.stderr)
            continue
        sel = np.zeros(len(masks[iid]), bool)
        sel[picks[iid]] = True
        ms = masks[iid].filter(sel)
        dense = torch.from_numpy(ms.decode())
        crops.append(masked_crops(image, dense, ms.boxes, size, fill))
        keeps.append(_keep(mask_crops(dense, ms.boxes, size), patch))
        labels.append(ms.class_index.astype(np.int64))
        scores.append(ms.scores)
    if not crops:
        raise OvlabelError(f"run '{layout.root}' has no readable image with a mask to train mask prompts on"
                           f"{f' (first problem: {skipped[0]})' if skipped else ''}; pass --images if its images moved")
    return CropSet(np.concatenate(crops), torch.cat(keeps), np.concatenate(labels), np.concatenate(scores), skipped)


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


@dataclass
class MptSummary:
    out: Path
    crops: int = 0
    classes: list = field(default_factory=list)
    history: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def describe(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f"{self.crops} masked crops of {len(self.classes)} classes, {len(self.history)} epochs, last epoch "
                f"loss {last.get('loss', float('nan')):.4f}, train accuracy {last.get('accuracy', float('nan')):.3f}; "
                f"{len(self.skipped)} images skipped -> {self.out}")


def train(run_dir: str | Path, out: str | Path, cfg: MptConfig, clip=None) -> MptSummary:
    """Learn mask prompts for the run in ``run_dir``; write the checkpoint folder ``out`` (see the
    module docstring). ``clip`` may inject a ready :class:`~ovlabel.models.clip.ClipModel`."""
    from ovlabel import __version__
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.io.atomic import write_json
    from ovlabel.models.clip_mpt import MPT_FORMAT, MPT_VERSION, save_prompts
    from ovlabel.stages.trainset import read_run, vocabulary_from_run
    from ovlabel.text import class_text_features
    from ovlabel.vocab import load_templates

    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OvlabelError(f"--out '{out}' exists and is not an empty folder; choose a new one")
    _, run = read_run(run_dir)
    vocab = vocabulary_from_run(run)
    templates = load_templates(cfg.templates)
    if clip is None:
        from ovlabel.models.registry import load_model, parse_model

        name = cfg.clip or (run.get("settings", {}).get("models") or {}).get("clip")
        if not name:
            raise OvlabelError(f"run '{run_dir}' does not record its CLIP model; pass --clip")
        device = resolve_device(cfg.device)
        clip = load_model(parse_model(name, "clip"), device, resolve_precision(cfg.precision, device))
    data = collect_crops(run_dir, clip.input_size, clip.patch_size, clip.fill_color, cfg, cfg.progress)
    text = class_text_features(clip, vocab, templates).to(clip.device)
    summary = MptSummary(out, len(data.labels), sorted({vocab.names[i] for i in data.labels}), skipped=data.skipped)
    config = {"format": MPT_FORMAT, "format_version": MPT_VERSION, "prompts": {"depth": cfg.depth}, "clip": clip.identity,
              "templates": templates.to_json(), "fill_color": list(clip.fill_color)}
    prov = {"ovlabel_version": __version__, "command": "train-mpt", "argv": sys.argv,
            "run": {"path": str(Path(run_dir).expanduser().resolve()), "settings_key": run.get("settings_key")},
            "params": cfg.result_params(), "last_invocation": asdict(cfg), "crops": len(data.labels),
            "crops_per_class": {vocab.names[int(c)]: int(n) for c, n in zip(*np.unique(data.labels, return_counts=True))},
            "skipped_images": data.skipped,
            "substitute": "the run's most confident masked crops and their pseudo classes stand in for OVSeg's caption pairs"}

    def save(prompts, history):
        epoch = len(history)
        save_prompts(out, prompts, config | {"prompts": prompts.dims(), "epoch": epoch, "epochs": cfg.epochs,
                                             "classes_trained": summary.classes})
        write_json(out / "train.json", prov | {"history": history, "status": "complete" if epoch == cfg.epochs else "running"})

    _, summary.history = fit(clip, data.crops, data.keep, data.labels, text, cfg, on_epoch=save)
    return summary


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


def checkpoint_fingerprint(ckpt: str | Path) -> dict:
    """What identifies a mask-prompt checkpoint in a run's settings: the SHA-256 of its weights and its
    epoch (not its folder, so a moved checkpoint keeps a run's key)."""
    from ovlabel.cache import file_sha256
    from ovlabel.models.clip_mpt import CONFIG_FILE, WEIGHTS_FILE

    folder = Path(ckpt).expanduser()
    if not (folder / WEIGHTS_FILE).is_file():
        raise OvlabelError(f"'{ckpt}' holds no {WEIGHTS_FILE}: train mask prompts with `ovlabel train-mpt RUN --out CKPT`")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    return {"sha256": file_sha256(folder / WEIGHTS_FILE), "epoch": config.get("epoch")}
