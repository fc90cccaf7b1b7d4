"""``salience``: PnP-OVSS labels for a folder of images or an existing run, written as a complete run directory.

Input: images (folder, list file, one image) with ``--vocab``/``--classes`` (every class in every prompt),
or a run directory: its images, its vocabulary and, per image, the classes its Stage 1.1 detected (CLIP's
crop detection stands in for the GPT-4o step of seed 004 §3). Output: manifest.parquet, masks.parquet
(source ``salience``), coco.json, labels/, run.json, optional soft/ and overlays/ — what ``pseudo-label``
writes, so ``eval``, ``refine`` and ``train-align`` read it unchanged.

Resumable: an image's result is a part file named by a digest of its content hash and its class list,
under a key of the settings (``parts/<settings>/<digest>.parquet``), written last, so an interrupted run
redoes only unfinished images and a changed parent (other detected classes) redoes the affected ones.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovlabel.artifacts import (
    RunLayout,
    label_names,
    part_info,
    read_manifest,
    read_masks,
    write_label_png,
    write_part,
    write_soft_map,
)
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.masks import SOURCE_STAGE_1_1
from ovlabel.pipeline import RunSummary
from ovlabel.salience_config import SalienceRunConfig
from ovlabel.vocab import Vocabulary, load_vocabulary


@dataclass
class Item:
    """One image to label: ``file`` (relative to ``root``), its manifest ``image_id`` and ``label_file``, the
    vocabulary indices to look for (``classes``), and the parent's ``sha256``/failure ``reason`` if any."""

    file: str
    path: Path
    image_id: int
    label_file: str
    classes: list[int]
    sha256: str | None = None
    reason: str | None = None


@dataclass
class Inputs:
    """Resolved input: items, vocabulary, image root, where the classes come from, provenance."""

    items: list[Item]
    vocab: Vocabulary
    root: Path
    classes_from: str
    info: dict


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").is_file() and (path / "manifest.parquet").is_file()


def resolve_inputs(inputs, vocab: str | None, images: str | None = None, exclude: Path | None = None) -> Inputs:
    """Images and per-image classes from a folder/list/image with a vocabulary, or from a run directory.

    For a run without ``vocab``: its vocabulary, and per image the classes of its Stage 1.1 masks (of all
    its masks when it has no Stage 1.1 masks, e.g. a ``refine`` or ``salience`` run). Raises OvlabelError
    when there is nothing to say which classes to look for.
    """
    src = Path(inputs).expanduser().resolve()
    if is_run(src):
        return _from_run(src, vocab, images)
    from ovlabel.io.images import discover_images

    if vocab is None:
        raise OvlabelError(f"'{inputs}' is not a run directory: give the classes to look for with --vocab or --classes")
    voc = load_vocabulary(vocab)
    source = discover_images(src, exclude=exclude)
    names = label_names([e.rel for e in source.entries])
    every = list(range(len(voc)))
    items = [Item(e.rel, e.path, i, f"labels/{names[e.rel]}", every) for i, e in enumerate(source.entries, start=1)]
    info = {"path": str(src), "kind": source.kind, "root": str(source.root)}
    return Inputs(items, voc, source.root, "vocabulary", info)


def _from_run(run_dir: Path, vocab: str | None, images: str | None) -> Inputs:
    layout = RunLayout(run_dir)
    doc = layout.read_run_json() or {}
    if doc.get("status") != "complete":
        raise OvlabelError(f"run '{run_dir}' is not complete (status '{doc.get('status')}'); finish it first")
    root = Path(images).expanduser().resolve() if images else Path((doc.get("input") or {}).get("root", ""))
    if not images and not (doc.get("input") or {}).get("root"):
        raise OvlabelError(f"run '{run_dir}' does not record its image folder; pass --images")
    rows = read_manifest(layout.manifest)
    if vocab is not None:
        voc, classes_from = load_vocabulary(vocab), "vocabulary"
        per_image = {r["image_id"]: list(range(len(voc))) for r in rows}
    else:
        voc = Vocabulary.from_json(doc["settings"]["vocabulary"])
        masks = read_masks(layout.masks) if layout.masks.exists() else {}
        has_11 = any(SOURCE_STAGE_1_1 in ms.source for ms in masks.values())
        classes_from = "stage1.1 masks of the parent run" if has_11 else "masks of the parent run"
        per_image = {}
        for image_id, ms in masks.items():
            sel = [c for c, s in zip(ms.class_index, ms.source) if s == SOURCE_STAGE_1_1 or not has_11]
            per_image[image_id] = sorted({int(c) for c in sel})
    items = []
    for r in rows:
        label_file = r["label_file"] or f"labels/{label_names([r['file']])[r['file']]}"
        reason = None if r["status"] == "ok" else f"failed in the parent run: {r['reason']}"
        items.append(Item(r["file"], root / r["file"], r["image_id"], label_file, per_image.get(r["image_id"], []),
                          r["sha256"], reason))
    info = {"path": str(run_dir), "kind": "run", "root": str(root),
            "parent": {"settings_key": doc.get("settings_key"), "command": doc.get("command")}}
    return Inputs(items, voc, root, classes_from, info)


@dataclass
class SalienceSummary(RunSummary):
    """A :class:`~ovlabel.pipeline.RunSummary` with the model's time per phase (seconds)."""

    timings: dict = field(default_factory=dict)


class _Lazy:
    """Loads BLIP on first use, so a run with nothing to do loads nothing."""

    def __init__(self, cfg: SalienceRunConfig, spec, injected):
        from ovlabel.device import resolve_device, resolve_precision

        self.cfg, self.spec, self.model, self.extractor = cfg, spec, injected, None
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)

    def get(self):
        if self.extractor is None:
            from ovlabel.models.registry import load_model
            from ovlabel.stages.salience import SalienceExtractor

            if self.model is None:
                self.model = load_model(self.spec, self.device, self.precision)
            self.extractor = SalienceExtractor(self.model, self.cfg.salience)
        return self.extractor


def _digest(sha: str, classes: list[int]) -> str:
    return hashlib.sha256(f"{sha}:{','.join(map(str, classes))}".encode()).hexdigest()


def run(inputs, out, cfg: SalienceRunConfig, model=None) -> SalienceSummary:
    """Label ``inputs`` (images or a run directory) with PnP-OVSS into the run directory ``out``.

    ``model`` may inject a ready :class:`ovlabel.models.blip.BlipModel`. Raises OvlabelError for bad input or
    options; an image that fails is recorded in the manifest and skipped.
    """
    from ovlabel.io.lock import remove_stale_temps, run_lock
    from ovlabel.models.registry import resolve_models
    from ovlabel.pipeline import check_output_dir, settings_key
    from ovlabel.runinfo import TINY_NOTE, _now, _versions, finalize_parts

    out = Path(out).expanduser().resolve()
    src = Path(inputs).expanduser().resolve()
    spec = resolve_models(cfg.models, {"blip": cfg.blip}, families=("blip",))["blip"]
    lazy = _Lazy(cfg, spec, model)  # validates --device/--precision, loads nothing
    res = resolve_inputs(src, cfg.vocab, cfg.images, exclude=out)
    if is_run(src):  # never write into the parent run, nor into the image folder
        check_output_dir(out, src, "folder")
    check_output_dir(out, res.root, "folder" if is_run(src) else res.info["kind"])
    settings = {
        "stages": ["salience"], "vocabulary": res.vocab.to_json(), "classes_from": res.classes_from,
        "models": {"blip": model.identity["spec"] if model else spec.name}, "salience": cfg.salience.to_json(),
    }
    key = settings_key(settings)
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "salience"):  # one writer per run directory; a killed writer never blocks (io/lock.py)
        if (layout.read_run_json() or {}).get("status") != "complete":
            remove_stale_temps(out)  # left by a killed predecessor
        prev = layout.read_run_json()
        if prev and prev.get("settings_key") != key and not cfg.overwrite:
            raise OvlabelError(f"'{out}' holds a run made with different settings; pass --overwrite to relabel it with "
                               f"the new settings, or choose another --out")
        if cfg.overwrite:
            shutil.rmtree(layout.parts / key, ignore_errors=True)
        if cfg.overwrite or (prev and prev.get("settings_key") != key):
            shutil.rmtree(layout.soft, ignore_errors=True)  # soft maps of other settings would mislead refine
        doc = dict(prev or {})
        doc.update({"ovlabel_version": _version(), "command": "salience", "argv": sys.argv, "status": "running",
                    "created": (prev or {}).get("created") or _now(), "updated": _now(), "input": res.info,
                    "settings_key": key, "settings": settings})
        write_json(layout.run_json, doc)

        summary = SalienceSummary(out=out, total=len(res.items))
        rows = _label_all(res, layout, key, cfg, lazy, summary)
        names = res.vocab.names
        description = f"ovlabel PnP-OVSS salience labels (BLIP GradCAM + Salience DropOut), vocabulary {res.vocab.source}"
        finalize_parts(layout, key, rows, res.vocab.to_json(), description, summary)
        ok = [r for r in rows if r["status"] == "ok"]
        if layout.soft.is_dir():
            wanted = {layout.soft_map(r["label_file"]) for r in ok}
            for f in layout.soft.rglob("*.npz"):
                if f not in wanted:
                    f.unlink()
        if cfg.overlays:
            from ovlabel.runinfo import write_overlays

            over = lambda r: layout.overlays / Path(r["label_file"]).relative_to("labels").with_suffix(".jpg")
            write_overlays(layout, res.root, [r for r in ok if r["file"] in summary.new_files or not over(r).exists()],
                           names)
        ident = lazy.model.identity if lazy.model is not None else (prev or {}).get("models", {}).get("blip")
        if lazy.model is not None:
            summary.timings = {k: round(v, 3) for k, v in
                               (dict(lazy.model.timings) | dict(lazy.extractor.timings if lazy.extractor else {})).items()}
        doc.update({
            "status": "complete", "updated": _now(), "models": {"blip": ident},
            "counts": {"images": summary.total, "labelled": summary.labelled, "failed": len(summary.failures),
                       "masks": summary.masks, "new_this_run": summary.new, "reused_this_run": summary.reused},
            "last_invocation": {"parameters": asdict(cfg), "runtime": {
                "device": str(lazy.device), "precision": lazy.precision, "versions": _versions(),
                "seconds": summary.timings}},
            "label_maps": "uint8 PNG, value = class index (position in the vocabulary), 255 = unlabeled",
            "coco_category_id": "class index + 1 (COCO reserves 0)",
            "artifacts": {"manifest": layout.manifest.name, "masks": layout.masks.name, "coco": layout.coco.name,
                          "labels": layout.labels.name + "/", "soft": layout.soft.name + "/" if cfg.keep_soft else None},
        })
        doc.pop("note", None)
        if ident and ident.get("random_init"):
            doc["note"] = TINY_NOTE
        write_json(layout.run_json, doc)
    return summary


def _version() -> str:
    from ovlabel import __version__

    return __version__


def _label_all(res: Inputs, layout: RunLayout, key: str, cfg: SalienceRunConfig, lazy: _Lazy, summary) -> list[dict]:
    """Label every item (in batches of ``cfg.batch_size``); returns manifest rows with ``part`` for ok ones."""
    from tqdm import tqdm

    from ovlabel.io.images import decode_image, read_file

    rows: list[dict] = []
    batch: list[tuple[dict, Item, object]] = []
    bar = tqdm(total=len(res.items), unit="img", desc="salience", disable=not cfg.progress, dynamic_ncols=True)

    def fail(row, reason):
        row.update(status="failed", reason=reason, label_file=None, num_masks=0)
        row.pop("part", None)
        summary.failures.append((row["file"], reason))
        bar.update(1)

    def flush():
        for (row, item, image), result in zip(batch, _process(lazy, res.vocab, [(it, img) for _, it, img in batch])):
            if isinstance(result, str):
                fail(row, result)
                continue
            masks, label_map, soft = result
            if cfg.keep_soft:
                write_soft_map(layout.soft_map(item.label_file), *soft)
            write_label_png(layout.root / item.label_file, label_map)
            write_part(Path(row["part"]), masks, image.shape[1], image.shape[0])  # last: it means "done"
            row["num_masks"] = len(masks)
            summary.new += 1
            summary.new_files.add(item.file)
            bar.update(1)
        batch.clear()

    for item in res.items:
        row = {"image_id": item.image_id, "file": item.file, "sha256": item.sha256, "width": None, "height": None,
               "status": "ok", "reason": None, "label_file": item.label_file, "num_masks": 0}
        rows.append(row)
        if item.reason:
            fail(row, item.reason)
            continue
        try:
            data, sha = read_file(item.path)
        except ImageDecodeError as exc:
            fail(row, str(exc))
            continue
        if item.sha256 and sha != item.sha256:
            fail(row, f"image changed since the parent run (sha256 {sha[:12]} != {item.sha256[:12]})")
            continue
        row["sha256"] = sha
        row["part"] = str(layout.part(key, _digest(sha, item.classes)))
        soft_ok = not cfg.keep_soft or layout.soft_map(item.label_file).exists()
        if Path(row["part"]).exists() and soft_ok:
            row["num_masks"], row["width"], row["height"] = part_info(Path(row["part"]))
            summary.reused += 1
            bar.update(1)
            continue
        try:
            image = decode_image(data)
        except ImageDecodeError as exc:
            fail(row, str(exc))
            continue
        row["height"], row["width"] = image.shape[:2]
        batch.append((row, item, image))
        if len(batch) >= cfg.batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return rows


def _process(lazy: _Lazy, vocab: Vocabulary, batch: list[tuple[Item, object]]) -> list:
    """Results of :meth:`SalienceExtractor.label` per image, or a failure reason; a failing batch is retried
    image by image so that one bad image cannot sink the others."""
    import torch

    extractor = lazy.get()
    names = [[vocab.names[c] for c in item.classes] for item, _ in batch]
    try:
        with torch.inference_mode():
            return extractor.label([img for _, img in batch], names, [item.classes for item, _ in batch])
    except Exception as exc:
        if len(batch) > 1:
            return [r for one in batch for r in _process(lazy, vocab, [one])]
        if isinstance(exc, OvlabelError):
            return [str(exc)]
        return ["processing error: " + traceback.format_exc(limit=1).strip().splitlines()[-1]]
