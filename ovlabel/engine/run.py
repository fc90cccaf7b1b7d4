"""A run: one labelling command over a work list, into a run directory, resumable and crash-safe.

:func:`execute` is the one place every labelling command goes through. Under the run directory's lock it
reads what an earlier run left (``run.json``, parts), refuses settings changes that need ``--overwrite``,
records what it is doing, sends the images whose parts are missing to an executor, writes each result as
it arrives (soft map, then parts, then label map: a part means "done"), rebuilds the dataset artifacts
from the parts and marks the run complete. A killed run loses at most the batches in flight.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ovlabel.artifacts import RunLayout, write_soft_map
from ovlabel.engine import provenance
from ovlabel.engine.cache import RunCache, file_stat
from ovlabel.engine.executors import InlineExecutor, ProcessExecutor
from ovlabel.engine.inputs import check_output_dir, ensure_writable
from ovlabel.engine.rebuild import rebuild, write_label
from ovlabel.engine.stage import Output, Stage, Work, Worker
from ovlabel.engine.store import PartStore, paint_id
from ovlabel.engine.summary import RunSummary
from ovlabel.errors import ImageDecodeError, ImageSkipped, OutputError, OvlabelError
from ovlabel.io.images import decode_image, pixel_limit_reason, probe_image, read_file, read_input
from ovlabel.io.lock import remove_stale_temps, run_lock


def execute(stage: Stage, out: str | Path, worker: Callable[[], Worker] | None = None) -> RunSummary:
    """Run ``stage`` into the run directory ``out``; returns what it did.

    ``worker``: builds a :class:`~ovlabel.engine.stage.Worker` from models the caller made (tests,
    notebooks), called once on the first image to process; by default the executor builds workers from the
    stage's settings. Raises
    :class:`~ovlabel.errors.OvlabelError` for a bad output folder, a run of other settings without
    ``overwrite``, or another process holding the run; an image that fails is recorded and skipped.
    """
    out = Path(out).expanduser().resolve()
    layout = RunLayout(out)
    check_output_dir(out, stage.inputs)
    key, keys = stage.key, stage.keys
    ensure_writable(out)
    with run_lock(out, stage.command), _os_errors(out):
        prev, damaged = provenance.read_previous(layout)
        trusted = bool(prev) and prev.get("status") == "complete"
        if not trusted:
            remove_stale_temps(out)  # left by a killed predecessor
        reasons = damaged + provenance.recompute_reasons(prev, stage.settings, key, keys, stage.overwrite,
                                                         stage.rebuild_stages, out, stage.refusal_hint)
        if stage.overwrite:
            for k in keys.values():
                shutil.rmtree(layout.parts / k, ignore_errors=True)
        if stage.overwrite or (prev and prev.get("settings_key") != key):
            shutil.rmtree(layout.soft, ignore_errors=True)  # soft maps of other settings would mislead refine
        doc = provenance.start(layout, prev, stage.command, stage.inputs.info, stage.settings, key, keys, stage.extra)

        summary = RunSummary(out=out, total=len(stage.inputs.items), reasons=reasons, verb=stage.verb,
                             soft=stage.soft_inputs or 0, not_searched=stage.inputs.info.get("not_searched") or {})
        store = PartStore(layout, keys)
        cache = RunCache(layout)
        executor = make_executor(stage, worker)
        rows, ids, stats = _label_all(stage, layout, store, cache, executor, summary)
        report = executor.close()
        if store.damaged:
            summary.reasons.append(f"{len(store.damaged)} damaged part file{'s' if len(store.damaged) > 1 else ''} "
                                   f"(unreadable or truncated): recomputed like missing ones")
        summary.stats, summary.timings = report.stats, report.timings
        rebuild(layout, stage, store, rows, ids, stats, summary, doc, trusted, cache)
        models = stage.refresh_models(report.identities or None, doc)
        note = stage.note
        if note is None and any(m and m.get("random_init") for m in (models or {}).values()):
            note = provenance.TINY_NOTE
        runtime = {"device": report.device or _resolved(stage.device), "precision": report.precision,
                   "seconds": {k: round(v, 3) for k, v in summary.timings.items()}}
        artifacts = {"manifest": layout.manifest.name, "masks": layout.masks.name, "coco": layout.coco.name,
                     "labels": layout.labels.name + "/", "overlays": layout.overlays.name + "/" if stage.overlays else None,
                     "soft": layout.soft.name + "/" if stage.keep_soft else None}
        counts = None if stage.soft_inputs is None else {"from_soft_maps": summary.soft}
        provenance.complete(layout, doc, key, summary, models, stage.parameters, runtime, artifacts, note, counts)
    return summary


def _resolved(device: str) -> str | None:
    return None if device == "auto" else device


@contextlib.contextmanager
def _os_errors(out: Path):
    """A file-system error on the run directory's own files (removing stale files, pruning) as one
    :class:`OutputError` line naming the path (exit 1); atomic writes raise it themselves."""
    try:
        yield
    except OSError as exc:
        where = Path(os.fsdecode(exc.filename)) if exc.filename else None
        if where is None or not (where == out or out in where.parents):
            raise
        raise OutputError(where, exc, doing="update") from None


def _label_all(stage: Stage, layout: RunLayout, store: PartStore, cache: RunCache, executor, summary: RunSummary):
    """Scan every item, send those with missing parts to ``executor``, write what comes back. Returns the
    manifest rows (in item order) and, per labelled file, its part ids and the stat it was hashed with.

    A file whose stat is the one the cache hashed it with is not read again when its parts exist
    (:mod:`ovlabel.engine.cache`; ``stage.rehash`` reads every file)."""
    from tqdm import tqdm

    key = stage.key  # derived from the settings on each access: once here
    rows: dict[str, dict] = {}
    ids: dict[str, dict[str, str]] = {}
    stats: dict[str, dict] = {}
    bar = tqdm(total=len(stage.inputs.items), unit="img", desc=stage.command, disable=not stage.progress,
               dynamic_ncols=True)

    def record(item, sha, status, reason=None, width=None, height=None, n=0):
        rows[item.file] = {
            "image_id": item.image_id, "file": item.file, "sha256": sha, "width": width, "height": height,
            "status": status, "reason": reason, "label_file": item.label_file if status == "ok" else None,
            "num_masks": n,
        }
        if status != "ok":
            (summary.skipped if status == "skipped" else summary.failures).append((item.file, reason))
        if stage.progress:  # tqdm formats the postfix even when disabled (0.3 s per 10,000 images)
            bar.update(1)
            bar.set_postfix(new=summary.new, done=summary.reused, failed=len(summary.failures), refresh=False)

    def _needs(part_ids: dict, item) -> set[str]:
        """The stages whose parts of ``item`` are missing (all of them when its soft map is)."""
        needs = store.missing(part_ids)
        if not needs and stage.keep_soft and not stage.soft_path(layout, item).exists():
            needs = set(part_ids)
        return needs

    def done_before(item) -> str | None:
        """The content hash of ``item`` if its file is unchanged since the cache hashed it and its parts
        exist: it needs neither reading nor work (checked in this thread: a stat and a few lookups)."""
        stats[item.file] = stat = file_stat(item.path)
        known = None if stage.rehash else cache.sha_for(item.file, stat)
        if known is not None and item.sha256 in (None, known) and not _needs(stage.part_ids(item, known), item):
            return known
        return None

    def load(item):
        """Read (and, for an inline executor, decode) one item: ``(item, sha, work or None, image, error,
        status)``; ``error`` is why it fails (``status`` "failed") or is skipped (``status`` "skipped")."""
        try:
            data, sha = read_input(item.path)
        except ImageDecodeError as exc:
            return item, item.sha256, None, None, str(exc), "failed"
        if item.sha256 and sha != item.sha256:
            return item, item.sha256, None, None, (f"image changed since the parent run (sha256 {sha[:12]} != "
                                                   f"{item.sha256[:12]})"), "failed"
        try:  # the header alone: an animated or too large image is skipped without decoding it
            probe_image(item.path if data is None else data, stage.max_pixels)
        except ImageDecodeError as exc:
            return item, sha, None, None, str(exc), "skipped" if isinstance(exc, ImageSkipped) else "failed"
        needs = _needs(stage.part_ids(item, sha), item)
        if not needs:
            return item, sha, None, None, None, "ok"
        work = Work(item, sha, frozenset(needs))
        if not executor.wants_images:
            return item, sha, work, None, None, "ok"
        try:
            data = read_file(item.path)[0] if data is None else data
            return item, sha, work, decode_image(data, stage.max_pixels), None, "ok"
        except ImageDecodeError as exc:
            return item, sha, None, None, str(exc), "skipped" if isinstance(exc, ImageSkipped) else "failed"

    def reused(item, sha):
        """``item`` was done in an earlier run; its label map is checked in the rebuild."""
        ids[item.file] = stage.part_ids(item, sha)
        hit = cache.image(item.file, paint_id(key, ids[item.file]))
        if hit is not None:
            n, w, h = hit["num_masks"], hit["width"], hit["height"]
        else:
            counts, w, h = store.info(ids[item.file])
            n = stage.merged_count(counts)
        too_large = pixel_limit_reason(w, h, stage.max_pixels)  # --max-pixels lowered since it was labelled
        if too_large:
            record(item, sha, "skipped", too_large)
            return
        summary.reused += 1
        record(item, sha, "ok", width=w, height=h, n=n)

    def works():
        todo = []
        for item in stage.inputs.items:
            if item.reason:  # a folder that cannot be searched, not a regular file, failed in the parent run
                record(item, item.sha256, item.status, item.reason)
            elif (sha := done_before(item)) is not None:
                reused(item, sha)
            else:
                todo.append(item)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for item, sha, work, image, error, status in _prefetch(pool, load, todo, 2 * stage.batch_size):
                if error is not None:
                    record(item, sha, status, error)
                elif work is None:
                    reused(item, sha)
                else:
                    yield work, image

    for work, result in executor.run(works()):
        item = work.item
        if isinstance(result, str):
            record(item, work.sha256, "failed", result)
            continue
        h, w = _write(stage, layout, store, work, result)
        ids[item.file] = stage.part_ids(item, work.sha256)
        parts = {s: m for s, m in result.parts.items() if s in work.needs}
        merged = stage.merge(_complete(store, ids[item.file], parts), work.sha256)
        write_label(layout, item.label_file, merged.label_map(h, w, policy=stage.paint))
        summary.new += 1
        summary.new_files.add(item.file)
        record(item, work.sha256, "ok", width=w, height=h, n=len(merged))
    bar.close()
    return [rows[i.file] for i in stage.inputs.items], ids, stats


def _write(stage: Stage, layout: RunLayout, store: PartStore, work: Work, result: Output) -> tuple[int, int]:
    """Store one image's result: its soft map first, then its parts (a part means "done"). Returns (h, w)."""
    h, w = result.size
    if stage.keep_soft and result.soft is not None:
        write_soft_map(stage.soft_path(layout, work.item), *result.soft)
    ids = stage.part_ids(work.item, work.sha256)
    for s in work.needs:
        store.write(s, ids[s], result.parts[s], w, h)
    return h, w


def _complete(store: PartStore, ids: dict[str, str], parts: dict) -> dict:
    """``parts`` with the image's other stages read from the store (computed in an earlier run)."""
    rest = {s: pid for s, pid in ids.items() if s not in parts}
    return {**parts, **(store.read(rest)[0] if rest else {})}


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


def make_executor(stage: Stage, models_given: Callable[[], Worker] | None = None):
    """The executor a stage's settings ask for: Ray with ``executor="ray"``, worker processes with several
    ``devices`` or ``workers`` > 1, else inline (always inline with models built by the caller)."""
    if models_given is not None:
        if stage.executor != "local" or len(stage.devices) > 1 or (stage.workers or 1) > 1:
            raise OvlabelError("models passed in from Python run in this process only: use the local executor "
                               "with one device and one worker")
        return InlineExecutor(stage, models_given)
    if stage.executor == "ray":
        from ovlabel.engine.ray_executor import RayExecutor

        return RayExecutor(stage)
    if len(stage.devices) > 1:
        return ProcessExecutor(stage, len(stage.devices), stage.devices)
    if (stage.workers or 1) > 1:
        return ProcessExecutor(stage, stage.workers)
    return InlineExecutor(stage)
