"""``pseudo-label`` and ``classify-masks``: images in, a complete run directory out (FMbSeg Stage 1.1/1.2).

The run is resumable by construction: each stage's result for an image is stored as a part file named by
the image's content hash under a key of exactly the settings that produced it
(``parts/<stage settings>/<sha256>.parquet``) the moment it is computed, and the dataset-level artifacts
(manifest, masks.parquet, coco.json) are rebuilt from the parts at the end, merging the stages
(:mod:`ovlabel.merge`). Re-running the same command skips every image whose parts exist; killing it loses
at most the batch in flight; adding Stage 1.2 to a Stage 1.1 run computes only Stage 1.2.

One process writes a run directory at a time (:func:`ovlabel.io.lock.run_lock`). ``run.json`` says
``complete`` only once every artifact is consistent; a run that finds it otherwise (its predecessor was
killed) trusts only the parts and rebuilds the rest (:func:`ovlabel.runinfo.finalize`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.artifacts import RunLayout, label_names, part_info, read_part, write_part
from ovlabel.config import MergeConfig, PseudoLabelConfig
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.io.images import ImageEntry, decode_image, discover_images, read_file
from ovlabel.io.lock import ignorable, remove_stale_temps, run_lock
from ovlabel.masks import MaskSet
from ovlabel.merge import merge_stages, merged_count
from ovlabel.runinfo import write_label
from ovlabel.vocab import load_templates, load_vocabulary


@dataclass
class RunSummary:
    """What a run did: image counts, failures as (file, reason), masks written, model pass counters."""

    out: Path
    total: int = 0
    new: int = 0
    reused: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    new_files: set[str] = field(default_factory=set)
    masks: int = 0
    stats: dict = field(default_factory=dict)
    #: the input against the run's previous manifest: {"new", "changed", "removed", "unchanged"} image counts
    changes: dict = field(default_factory=dict)
    #: why images are recomputed (or the artifacts rebuilt) beyond new and changed images, one line each
    reasons: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return self.new + self.reused

    def describe(self) -> str:
        lines = [
            f"{self.total} images: {self.labelled} labelled ({self.new} new, {self.reused} already done), "
            f"{len(self.failures)} failed; {self.masks} masks -> {self.out}"
        ]
        if self.changes:
            c = self.changes
            lines.append(f"input since the last run: {c['new']} new, {c['changed']} changed, {c['removed']} removed, "
                         f"{c['unchanged']} unchanged")
        lines += [f"recomputing: {r}" for r in self.reasons]
        return "\n".join(lines)


def check_output_dir(out: Path, source_root: Path, source_kind: str) -> None:
    """Refuse output folders that would clobber or feed back into the input."""
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OvlabelError(f"--out '{out}' exists and is a file; give a folder")
    if source_kind == "folder" and (out == source_root or source_root in out.parents):
        raise OvlabelError(
            f"--out '{out}' is inside the input folder '{source_root}': its label maps and overlays would be "
            f"read as input images next time; choose an output folder outside the input"
        )
    if out.is_dir() and any(not ignorable(p.name) for p in out.iterdir()) and not RunLayout(out).run_json.exists():
        raise OvlabelError(
            f"--out '{out}' is a non-empty folder that is not an ovlabel run (no run.json); "
            f"choose a new or empty folder"
        )


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class _Models:
    """Loads CLIP, SAM and the class text features on first use, so a run with nothing to do loads nothing."""

    def __init__(self, cfg: PseudoLabelConfig, specs: dict, vocab, templates, injected: dict | None):
        from ovlabel.device import resolve_device, resolve_precision

        self.cfg, self.specs, self.vocab, self.templates = cfg, specs, vocab, templates
        self.injected = injected
        self.stage = None
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)

    def get(self):
        if self.stage is None:
            from ovlabel.models.registry import load_model
            from ovlabel.stages.stage1 import Stage1
            from ovlabel.text import class_text_features
            from ovlabel.vocab import load_templates

            if self.injected:
                clip, sam = self.injected["clip"], self.injected["sam"]
            else:
                clip = load_model(self.specs["clip"], self.device, self.precision)
                sam = load_model(self.specs["sam"], self.device, self.precision, sdpa=self.cfg.sdpa, compile=self.cfg.compile)
            cfg = self.cfg
            text = class_text_features(clip, self.vocab, self.templates)
            crop_text = None
            if "1.2" in cfg.stages and cfg.classify.needs_crops:
                crop_text = class_text_features(clip, self.vocab, load_templates(cfg.classify.templates))
            self.stage = Stage1(clip, sam, text, cfg.detect, cfg.automask, cfg.classify, crop_text)
        return self.stage

    def identities(self) -> dict | None:
        if self.stage is None:
            return None
        return {"clip": self.stage.clip.identity, "sam": self.stage.sam.identity}

    def stats(self) -> dict:
        if self.stage is None:
            return {}
        return dict(self.stage.clip.stats) | dict(self.stage.sam.stats)


def portable_name(source: str) -> str:
    """A vocabulary source (``file:/abs/classes.txt``) or template-set name (a preset, or the absolute path
    of a file) without its folder (``file:classes.txt``): settings and data files must not change when a
    checkout moves. Other names are returned as they are."""
    if source.startswith("file:"):
        return "file:" + Path(source[5:]).name
    if Path(source).is_absolute():
        return "file:" + Path(source).name
    return source


def weight_digests(specs: dict) -> dict[str, str]:
    """SHA-256 of the weights of models given as local files (``--sam sam:vit_b/PATH``): the same path can
    hold other weights tomorrow. Published weights (tags, URLs) are pinned by their names. Digests are
    remembered by (path, size, mtime), so this hashes each file once."""
    from ovlabel.cache import file_sha256

    out = {}
    for family, spec in sorted(specs.items()):
        if spec.kind == "file":
            if not Path(spec.weights).is_file():
                raise OvlabelError(f"{family} weights file '{spec.weights}' does not exist")
            out[family] = file_sha256(spec.weights)
    return out


def run_settings(
    cfg: PseudoLabelConfig, vocab, templates, model_names: dict, weights: dict | None = None
) -> tuple[dict, dict[str, str]]:
    """The settings that determine a run's outputs, and per stage the key of the settings that
    determine that stage's masks (its part folder). Stage 1.2 depends on Stage 1.1's CLIP pass
    (detected classes, feature map), hence on the detection parameters too. ``weights``: digests of
    weights given as files (:func:`weight_digests`)."""
    vocab_json = vocab.to_json() | {"source": portable_name(vocab.source)}
    templates_json = templates.to_json() | {"name": portable_name(templates.name)}
    base = {"vocabulary": vocab_json, "templates": templates_json, "models": model_names}
    if weights:
        base["weights_sha256"] = weights
    detect = cfg.detect.result_params()
    settings = {"stages": list(cfg.stages), **base, "detect": detect}
    keys = {}
    if "1.1" in cfg.stages:  # = the whole-run key of a Stage 1.1 run: parts of 0.1 runs stay valid
        keys["1.1"] = settings_key({"stages": ["1.1"], **base, "detect": detect})
    if "1.2" in cfg.stages:
        settings["automask"] = cfg.automask.result_params()
        settings["classify"] = cfg.classify.result_params()
        settings["merge"] = asdict(cfg.merge)
        presence = {k: v for k, v in detect.items() if k not in ("points_per_class", "multimask")}
        keys["1.2"] = settings_key({
            "stage": "1.2", **base, "detect": presence, "automask": settings["automask"],
            "classify": settings["classify"],
        })
    return settings, keys


def run(
    inputs: str | Path, out: str | Path, cfg: PseudoLabelConfig, models: dict | None = None,
    command: str = "pseudo-label", rebuild_stages: tuple[str, ...] = (),
) -> RunSummary:
    """Label every image under ``inputs`` into the run directory ``out``.

    ``models`` may inject ready model objects ``{"clip": ..., "sam": ...}`` (tests, notebooks); by default
    they are built from ``cfg``. ``rebuild_stages`` may be added or change their settings in an existing run
    without ``overwrite``, as long as every other stage it had keeps its settings key (``classify-masks``
    adding or redoing Stage 1.2 on a run whose Stage 1.1 stays as it is). Raises
    :class:`OvlabelError` for bad input; a bad image is recorded in the manifest and skipped.
    """
    from ovlabel.models.registry import resolve_models
    from ovlabel.runinfo import finalize, recompute_reasons, start_run_json

    out = Path(out).expanduser().resolve()
    layout = RunLayout(out)
    vocab = load_vocabulary(cfg.vocab)
    templates = load_templates(cfg.templates)
    if "1.2" in cfg.stages and cfg.classify.needs_crops:
        load_templates(cfg.classify.templates)  # a bad --crop-templates fails now, not after the first batch
    specs = resolve_models(cfg.models, {"clip": cfg.clip, "sam": cfg.sam})
    lazy = _Models(cfg, specs, vocab, templates, models)  # validates --device/--precision, loads nothing
    source = discover_images(inputs, exclude=out)
    check_output_dir(out, source.root, source.kind)
    model_names = (
        {f: m.identity["spec"] for f, m in models.items()} if models else {f: s.name for f, s in specs.items()}
    )
    weights = {} if models else weight_digests(specs)
    settings, stage_keys = run_settings(cfg, vocab, templates, model_names, weights)
    key = settings_key(settings)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, command):
        prev = layout.read_run_json()
        trusted = bool(prev) and prev.get("status") == "complete"
        if not trusted:
            remove_stale_temps(out)  # left by a killed predecessor
        reasons = recompute_reasons(prev, settings, key, stage_keys, cfg, rebuild_stages, out)
        if cfg.overwrite:
            for k in stage_keys.values():
                shutil.rmtree(layout.parts / k, ignore_errors=True)
        start_run_json(layout, prev, inputs, source, settings, key, stage_keys, command)

        summary = RunSummary(out=out, total=len(source.entries), reasons=reasons)
        names = label_names([e.rel for e in source.entries])
        store = _PartStore(layout, stage_keys, cfg.merge)
        rows = _label_images(store, source.entries, names, cfg, lazy, summary)
        summary.stats = lazy.stats()
        finalize(layout, key, store, source, rows, vocab, settings, lazy, cfg, summary, trusted=trusted)
    return summary


class _PartStore:
    """The per-image, per-stage part files of one run, and the merge of an image's stages."""

    def __init__(self, layout: RunLayout, stage_keys: dict[str, str], merge: MergeConfig | None = None):
        self.layout, self.keys, self.merge = layout, stage_keys, merge or MergeConfig()

    def path(self, stage: str, sha: str) -> Path:
        return self.layout.part(self.keys[stage], sha)

    def missing(self, sha: str) -> set[str]:
        return {s for s in self.keys if not self.path(s, sha).exists()}

    def write(self, stage: str, sha: str, masks: MaskSet, width: int, height: int) -> None:
        write_part(self.path(stage, sha), masks, width, height)

    def info(self, sha: str) -> tuple[int, int, int]:
        """``(masks after merging, width, height)`` from the part footers alone."""
        counts, w, h = {}, 0, 0
        for s in self.keys:
            counts[s], w, h = part_info(self.path(s, sha))
        return merged_count(counts, self.merge), w, h

    def merged(self, sha: str, parts: dict[str, MaskSet] | None = None) -> MaskSet:
        """The image's final masks: its stages merged (:func:`ovlabel.merge.merge_stages`)."""
        parts = dict(parts or {})
        for s in self.keys:
            if s not in parts:
                parts[s] = read_part(self.path(s, sha))[0]
        return merge_stages(parts, sha, self.merge)

    def label_map(self, masks: MaskSet, height: int, width: int) -> np.ndarray:
        return masks.label_map(height, width, policy=self.merge.paint)


def _label_images(
    store: _PartStore, entries, names, cfg, lazy, summary: RunSummary, desc: str = "pseudo-label"
) -> list[dict]:
    """Process every entry; returns manifest rows (without image ids) in entry order.

    ``lazy.get()`` must return a stage whose ``process(images, needs)`` gives, per image, a result whose
    ``.masks`` maps each needed stage of ``store`` to a :class:`MaskSet` (``segment`` reuses this loop with
    its own one-stage store)."""
    from tqdm import tqdm

    layout = store.layout
    rows: dict[str, dict] = {}
    batch: list[tuple[ImageEntry, str, np.ndarray, set[str]]] = []
    bar = tqdm(total=len(entries), unit="img", desc=desc, disable=not cfg.progress, dynamic_ncols=True)

    def record(entry, sha, status, reason=None, width=None, height=None, n=0):
        rows[entry.rel] = {
            "file": entry.rel, "sha256": sha, "width": width, "height": height, "status": status,
            "reason": reason, "label_file": f"labels/{names[entry.rel]}" if status == "ok" else None, "num_masks": n,
        }
        if status == "failed":
            summary.failures.append((entry.rel, reason))
        bar.update(1)
        bar.set_postfix(new=summary.new, done=summary.reused, failed=len(summary.failures), refresh=False)

    def flush():
        for entry, sha, result, error in _process_batch(lazy, batch):
            if error is not None:
                record(entry, sha, "failed", error)
                continue
            parts, (h, w) = result
            for stage, masks in parts.items():
                store.write(stage, sha, masks, w, h)
            masks = store.merged(sha, parts)
            write_label(layout, f"labels/{names[entry.rel]}", store.label_map(masks, h, w))
            summary.new += 1
            summary.new_files.add(entry.rel)
            record(entry, sha, "ok", width=w, height=h, n=len(masks))
        batch.clear()

    def load(entry: ImageEntry):
        try:
            data, sha = read_file(entry.path)
        except ImageDecodeError as exc:
            return entry, None, None, str(exc)
        needs = store.missing(sha)
        if not needs:
            return entry, sha, None, None
        try:
            return entry, sha, (decode_image(data), needs), None
        except ImageDecodeError as exc:
            return entry, sha, None, str(exc)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for entry, sha, image, error in _prefetch(pool, load, entries, depth=2 * cfg.image_batch):
            if error is not None:
                record(entry, sha, "failed", error)
            elif image is None:  # already done in an earlier run
                n, w, h = store.info(sha)  # its label map is checked in finalize
                summary.reused += 1
                record(entry, sha, "ok", width=w, height=h, n=n)
            else:
                batch.append((entry, sha) + image)
                if len(batch) >= cfg.image_batch:
                    flush()
        if batch:
            flush()
    bar.close()
    return [rows[e.rel] for e in entries]


def _prefetch(pool, fn, items, depth: int):
    """``map(fn, items)`` on a thread pool, in order, with at most ``depth`` items in flight."""
    pending = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            break
    for item in it:
        yield pending.pop(0).result()
        pending.append(pool.submit(fn, item))
    for fut in pending:
        yield fut.result()


def _process_batch(lazy: _Models, batch):
    """Run the missing stages on a batch; if the batch fails (say, out of memory), retry image by image so
    one bad image cannot sink the others. Yields ``(entry, sha, ({stage: masks}, (h, w)) or None, error
    or None)``."""
    import torch

    stage = lazy.get()
    try:
        with torch.inference_mode():
            results = stage.process([img for _, _, img, _ in batch], [needs for *_, needs in batch])
    except OvlabelError:
        raise
    except Exception:
        if len(batch) > 1:
            for item in batch:
                yield from _process_batch(lazy, [item])
            return
        entry, sha, _, _ = batch[0]
        yield entry, sha, None, "processing error: " + traceback.format_exc(limit=1).strip().splitlines()[-1]
        return
    for (entry, sha, img, _), res in zip(batch, results):
        yield entry, sha, (res.masks, img.shape[:2]), None
