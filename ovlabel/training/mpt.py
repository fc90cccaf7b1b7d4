"""``train-mpt``: learn OVSeg's mask prompts (seed 002 §3.3, §4.1) on a pseudo-label run's most confident
masked crops and write a checkpoint folder; the algorithms are :mod:`ovlabel.stages.mpt`."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ovlabel.config.mpt import MptConfig
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.stages.mpt import CropSet, _keep, fit, select_masks


def collect_crops(run_dir, size: int, patch: int, fill, cfg: MptConfig, progress: bool = False) -> CropSet:
    """The training crops of a run (see the module docstring)."""
    from ovlabel.artifacts import read_manifest, read_masks
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.io.names import image_path, recorded_path
    from ovlabel.stages.classify import mask_crops, masked_crops
    from ovlabel.stages.trainset import read_run

    layout, run = read_run(run_dir)
    root = Path(cfg.images).expanduser().resolve() if cfg.images else recorded_path(run["input"]["root"])
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
            raw, sha = read_file(image_path(root, r["file"]))
            if sha != r["sha256"]:
                raise ImageDecodeError("the file changed since it was pseudo-labelled (content hash differs)")
            image = decode_image(raw, max_pixels=None)  # labelled by its run: its limit applied there
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
        from ovlabel.models.offline import require_weights

        spec = parse_model(name, "clip")
        require_weights({"clip": spec}, "train-mpt")
        device = resolve_device(cfg.device)
        clip = load_model(spec, device, resolve_precision(cfg.precision, device))
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
