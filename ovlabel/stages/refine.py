"""``refine``: dense-CRF refinement of any run's label maps into a new run directory.

The input run is only read. For each labelled image the unaries come from the run's stored soft map
(``RUN/soft/``) when there is one, else from its label map smoothed by a Gaussian (seed 004 §3.3); the
CRF (:mod:`ovlabel.crf`) decides each pixel, and the refined map becomes one mask per class (source
``refine``, score = the mean CRF marginal over the mask) in a complete new run: manifest, masks.parquet,
coco.json, labels/, run.json naming its parent.

pydensecrf runs on the CPU in one thread, so images are refined by a pool of worker processes, each
writing its image's part file and label map itself (no large arrays cross process boundaries). Parts are
named by a hash of what the result depends on (the image bytes, the parent's label map and soft map), so a
killed refine resumes where it stopped and a changed parent image is redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.artifacts import (
    RunLayout,
    part_info,
    read_label_png,
    read_manifest,
    read_soft_map,
    write_label_png,
    write_part,
)
from ovlabel.config import CRFConfig, RefineConfig
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.io.lock import ignorable, remove_stale_temps, run_lock
from ovlabel.runinfo import finalize_parts

#: ``source`` of the masks refine writes.
SOURCE_REFINE = "refine"


@dataclass
class RefineSummary:
    """What a refine did: image counts, failures as (file, reason), masks written."""

    out: Path
    parent: Path
    total: int = 0
    new: int = 0
    reused: int = 0
    soft: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    new_files: set[str] = field(default_factory=set)
    masks: int = 0
    changes: dict = field(default_factory=dict)  # the parent's images against this run's previous manifest

    @property
    def refined(self) -> int:
        return self.new + self.reused

    def describe(self) -> str:
        soft = f", {self.soft} from soft maps" if self.soft else ""
        c = self.changes
        return (
            f"{self.total} images: {self.refined} refined ({self.new} new, {self.reused} already done{soft}), "
            f"{len(self.failures)} failed; {self.masks} masks -> {self.out}"
        ) + (f"\ninput since the last run: {c['new']} new, {c['changed']} changed, {c['removed']} removed, "
             f"{c['unchanged']} unchanged" if c else "")


@dataclass(frozen=True)
class _Task:
    """One image's work, sent to a worker process (paths and small values only)."""

    file: str
    image: str
    sha256: str
    width: int
    height: int
    parent_label: str
    soft: str | None
    out_label: str
    part: str
    crf: dict
    num_classes: int


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_parent(run_dir: Path) -> tuple[RunLayout, dict, list[dict]]:
    layout = RunLayout(run_dir)
    doc = layout.read_run_json()
    if doc is None or not layout.manifest.exists():
        raise OvlabelError(f"'{run_dir}' is not an ovlabel run (no run.json / manifest.parquet)")
    if doc.get("status") != "complete":
        raise OvlabelError(
            f"run '{run_dir}' is not complete (status '{doc.get('status')}'); finish it first by re-running "
            f"the command that made it"
        )
    return layout, doc, read_manifest(layout.manifest)


def _check_out(out: Path, parent: Path) -> None:
    if out == parent or parent in out.parents:
        raise OvlabelError(f"--out '{out}' is inside the input run '{parent}'; refine never writes into its input")
    if out in parent.parents:
        raise OvlabelError(f"--out '{out}' contains the input run '{parent}'; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise OvlabelError(f"--out '{out}' exists and is a file; give a folder")
    if out.is_dir() and any(not ignorable(p.name) for p in out.iterdir()) and not RunLayout(out).run_json.exists():
        raise OvlabelError(f"--out '{out}' is a non-empty folder that is not an ovlabel run; choose a new or empty folder")


def run(run_dir: str | Path, out: str | Path, cfg: RefineConfig) -> RefineSummary:
    """Refine every labelled image of the run ``run_dir`` into the new run ``out``.

    Raises :class:`OvlabelError` for a bad input run or output folder, or when another process is writing
    ``out`` (:func:`ovlabel.io.lock.run_lock`); an image that cannot be refined (missing, changed since the
    parent run, undecodable) is recorded as failed and skipped.
    """
    parent = Path(run_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    p_layout, p_doc, p_rows = _load_parent(parent)
    _check_out(out, parent)
    recorded_root = (p_doc.get("input") or {}).get("root")
    if not cfg.images and not recorded_root:
        raise OvlabelError(f"run '{parent}' does not record its image folder; pass --images")
    image_root = Path(cfg.images).expanduser().resolve() if cfg.images else Path(recorded_root)
    if out == image_root or image_root in out.parents:
        raise OvlabelError(f"--out '{out}' is inside the image folder '{image_root}'; choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "refine"):
        return _run(parent, out, image_root, (p_layout, p_doc, p_rows), cfg)


def _run(parent: Path, out: Path, image_root: Path, loaded, cfg: RefineConfig) -> RefineSummary:
    """The body of :func:`run`, holding the lock of ``out``."""
    from ovlabel.runinfo import _now, _versions

    p_layout, p_doc, p_rows = loaded
    vocab = p_doc["settings"]["vocabulary"]
    settings = {
        "stages": list(p_doc["settings"].get("stages", [])) + ["refine"],
        "vocabulary": vocab,
        "parent_settings_key": p_doc.get("settings_key"),
        "refine": asdict(cfg.crf),
    }
    key = _settings_key(settings)
    layout = RunLayout(out)
    prev = layout.read_run_json()
    if not prev or prev.get("status") != "complete":
        remove_stale_temps(out)  # left by a killed predecessor
    if prev and prev.get("settings_key") != key and not cfg.overwrite:
        raise OvlabelError(
            f"'{out}' holds a run made with different settings; pass --overwrite to redo it with the new "
            f"settings, or choose another --out"
        )
    if cfg.overwrite:
        shutil.rmtree(layout.parts / key, ignore_errors=True)
    parent_info = {"path": str(parent), "settings_key": p_doc.get("settings_key"), "command": p_doc.get("command"),
                   "ovlabel_version": p_doc.get("ovlabel_version")}
    doc = dict(prev or {})
    doc.update({
        "ovlabel_version": _version(), "command": "refine", "argv": sys.argv, "status": "running",
        "created": (prev or {}).get("created") or _now(), "updated": _now(), "parent": parent_info,
        "input": {"path": str(parent), "kind": "run", "root": str(image_root)},
        "settings_key": key, "settings": settings, "models": p_doc.get("models"),
    })
    doc.pop("note", None)
    if p_doc.get("note"):  # e.g. the parent's labels came from tiny random models
        doc["note"] = f"parent run: {p_doc['note']}"
    write_json(layout.run_json, doc)

    summary = RefineSummary(out=out, parent=parent, total=len(p_rows))
    rows = _refine_all(p_layout, layout, key, p_rows, image_root, cfg, summary, vocab["classes"])
    description = (f"ovlabel refined labels (stages {', '.join(settings['stages'])}), "
                   f"vocabulary {vocab.get('source')}")
    finalize_parts(layout, key, rows, vocab, description, summary)
    if cfg.overlays:
        from ovlabel.runinfo import write_overlays

        ok = [r for r in rows if r["status"] == "ok"]
        overlay = lambda r: layout.overlays / Path(r["label_file"]).relative_to("labels").with_suffix(".jpg")
        write_overlays(layout, image_root, [r for r in ok if not overlay(r).exists()], vocab["classes"])
    doc.update({
        "status": "complete", "updated": _now(),
        "counts": {"images": summary.total, "refined": summary.refined, "failed": len(summary.failures),
                   "masks": summary.masks, "new_this_run": summary.new, "reused_this_run": summary.reused,
                   "from_soft_maps": summary.soft},
        "last_invocation": {"parameters": _jsonable(asdict(cfg)), "runtime": {"versions": _versions()}},
        "label_maps": "uint8 PNG, value = class index (position in the vocabulary), 255 = unlabeled",
        "coco_category_id": "class index + 1 (COCO reserves 0)",
        "artifacts": {"manifest": layout.manifest.name, "masks": layout.masks.name, "coco": layout.coco.name,
                      "labels": layout.labels.name + "/"},
    })
    write_json(layout.run_json, doc)
    return summary


def _version() -> str:
    from ovlabel import __version__

    return __version__


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _refine_all(p_layout, layout, key, p_rows, image_root: Path, cfg: RefineConfig, summary,
                vocab_names: list[str]) -> list[dict]:
    """Refine every ok row (in a process pool); returns the new manifest rows in the parent's order."""
    from tqdm import tqdm

    rows: list[dict] = []
    tasks: list[tuple[dict, _Task]] = []
    for pr in p_rows:
        row = {k: pr.get(k) for k in ("image_id", "file", "sha256", "width", "height", "status", "reason",
                                      "label_file")}
        row["num_masks"] = 0
        rows.append(row)
        if pr["status"] != "ok":
            summary.failures.append((pr["file"], f"failed in the parent run: {pr['reason']}"))
            continue
        parent_label = p_layout.root / pr["label_file"]
        soft = p_layout.soft_map(pr["label_file"]) if cfg.crf.use_soft else None
        soft = soft if soft is not None and soft.is_file() else None
        if not parent_label.is_file():
            _fail(row, summary, f"label map {pr['label_file']} is missing from the parent run")
            continue
        digest = hashlib.sha256(
            f"{pr['sha256']}:{_file_digest(parent_label)}:{_file_digest(soft) if soft else ''}".encode()
        ).hexdigest()
        task = _Task(
            file=pr["file"], image=str(image_root / pr["file"]), sha256=pr["sha256"], width=pr["width"],
            height=pr["height"], parent_label=str(parent_label), soft=str(soft) if soft else None,
            out_label=str(layout.root / pr["label_file"]), part=str(layout.part(key, digest)),
            crf=asdict(cfg.crf), num_classes=len(vocab_names),
        )
        row["part"] = task.part
        if soft:
            summary.soft += 1
        if Path(task.part).exists():
            row["num_masks"] = part_info(Path(task.part))[0]
            summary.reused += 1
        else:
            tasks.append((row, task))

    bar = tqdm(total=summary.total, initial=summary.total - len(tasks), unit="img", desc="refine",
               disable=not cfg.progress, dynamic_ncols=True)

    def record(row, result):
        status, value = result
        if status == "ok":
            row["num_masks"] = value
            summary.new += 1
            summary.new_files.add(row["file"])
        else:
            _fail(row, summary, value)
        bar.update(1)

    if cfg.workers == 1 or len(tasks) <= 1:
        for row, task in tasks:
            record(row, refine_one(task))
    else:
        _run_pool(tasks, min(cfg.workers, len(tasks)), record)
    bar.close()
    return rows


def _run_pool(tasks, workers: int, record) -> None:
    """Keep ``2 * workers`` tasks in flight; results are recorded as they complete."""
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no fork of a possibly multi-threaded parent
    try:
        _drive_pool(ProcessPoolExecutor(max_workers=workers, mp_context=ctx), tasks, workers, record)
    except BrokenProcessPool:
        raise OvlabelError(
            f"a CRF worker process died (out of memory? each holds a few labels x height x width float32 arrays); "
            f"finished images are kept: re-run the same command with fewer --workers (now {workers}) to resume"
        ) from None


def _drive_pool(executor, tasks, workers: int, record) -> None:
    with executor as pool:
        pending = {}
        it = iter(tasks)
        for row, task in it:
            pending[pool.submit(refine_one, task)] = row
            if len(pending) >= 2 * workers:
                break
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    row = pending.pop(fut)
                    record(row, fut.result())
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[pool.submit(refine_one, nxt[1])] = nxt[0]
        except BaseException:  # Ctrl-C: do not start queued images; finished ones are kept
            for fut in pending:
                fut.cancel()
            raise


def _fail(row: dict, summary: RefineSummary, reason: str) -> None:
    row.update(status="failed", reason=reason, label_file=None, num_masks=0)
    row.pop("part", None)
    summary.failures.append((row["file"], reason))


def refine_one(task: _Task) -> tuple[str, int | str]:
    """Worker: refine one image, write its part file and label map. Returns ``("ok", num_masks)`` or
    ``("failed", reason)``; never raises for a bad image (one bad image never ends a run)."""
    try:
        return _refine_one(task)
    except Exception as exc:  # recorded in the manifest; the run goes on
        return "failed", f"refine error: {type(exc).__name__}: {exc}"


def _refine_one(task: _Task) -> tuple[str, int | str]:
    from ovlabel.crf import refine_label_map
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.masks import MaskSet

    try:
        data, sha = read_file(Path(task.image))
        if sha != task.sha256:
            return "failed", f"image changed since the parent run (sha256 {sha[:12]} != {task.sha256[:12]})"
        image = decode_image(data)
    except ImageDecodeError as exc:
        return "failed", str(exc)
    label_map = read_label_png(Path(task.parent_label))
    if label_map.ndim != 2 or label_map.shape != (task.height, task.width) or image.shape[:2] != label_map.shape:
        return "failed", (f"size mismatch: image {image.shape[1]}x{image.shape[0]}, parent label map "
                          f"{label_map.shape[1]}x{label_map.shape[0]}, manifest {task.width}x{task.height}")
    try:
        soft = read_soft_map(Path(task.soft)) if task.soft else None
    except (ValueError, OSError) as exc:
        return "failed", f"unreadable soft map: {exc}"
    for what, values in (("parent label map", label_map[label_map != 255]), ("soft map", soft[1] if soft else [])):
        if len(values) and int(np.max(values)) >= task.num_classes:
            return "failed", (f"{what} holds class index {int(np.max(values))} but the vocabulary has "
                              f"{task.num_classes} classes")
    refined, confidence = refine_label_map(image, label_map, CRFConfig(**task.crf), soft)
    classes = [int(c) for c in np.unique(refined) if c != 255]
    masks = np.stack([refined == c for c in classes]) if classes else np.zeros((0, *refined.shape), bool)
    scores = [float(confidence[m].mean()) for m in masks]
    ms = MaskSet.from_dense(masks, classes, scores, SOURCE_REFINE) if classes else MaskSet.empty()
    write_label_png(Path(task.out_label), refined)
    write_part(Path(task.part), ms, task.width, task.height)  # last: its existence means "done"
    return "ok", len(ms)
