"""Run-level bookkeeping: ``run.json`` provenance and the end-of-run rebuild of dataset artifacts."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ovlabel import __version__
from ovlabel.artifacts import (
    RunLayout,
    quality_summary,
    read_label_png,
    read_manifest,
    read_part,
    without_quality,
    write_label_png,
    write_manifest,
    write_masks_and_coco,
)
from ovlabel.errors import OvlabelError
from ovlabel.io.atomic import write_json

TINY_NOTE = (
    "tiny/random-initialised models were used: these labels exercise the pipeline and are meaningless"
)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "segment-anything", "pycocotools", "pyarrow", "numpy", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def start_run_json(
    layout: RunLayout, prev: dict | None, inputs, source, settings: dict, key: str, stage_keys: dict,
    command: str = "pseudo-label",
) -> None:
    """Record, before any work, what this run is doing (status ``running``), keeping earlier history."""
    doc = dict(prev or {})
    doc.update({
        "ovlabel_version": __version__,
        "command": command,
        "argv": sys.argv,
        "status": "running",
        "created": (prev or {}).get("created") or _now(),
        "updated": _now(),
        "input": {"path": str(Path(inputs).expanduser().resolve()), "kind": source.kind, "root": str(source.root)},
        "settings_key": key,
        "stage_keys": stage_keys,
        "settings": settings,
    })
    if prev and prev.get("settings_key") != key:
        doc.pop("models", None)
    write_json(layout.run_json, doc)


def _changed(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def recompute_reasons(prev, settings, key, stage_keys, cfg, rebuild_stages, out) -> list[str]:
    """Why this run recomputes more than new and changed images; refuses (OvlabelError) a change of
    settings that needs ``overwrite``. Empty for a first run or a plain incremental one."""
    if not prev:
        return []
    reasons = []
    if prev.get("status") != "complete":
        reasons.append(f"the previous `{prev.get('command', 'pseudo-label')}` did not finish (status "
                       f"'{prev.get('status')}'): keeping its finished images, rebuilding the artifacts")
    before = prev.get("stage_keys") or (  # runs of ovlabel 0.1: one stage, keyed by the run
        {"1.1": prev.get("settings_key")} if prev.get("settings", {}).get("stages") == ["1.1"] else {}
    )
    changed = ", ".join(_changed(prev.get("settings", {}), settings)) or "format"
    if prev.get("settings_key") != key and not cfg.overwrite:
        kept = all(stage_keys.get(s) == k for s, k in before.items() if s not in rebuild_stages)
        if not (rebuild_stages and kept):
            hint = ""
            if before.get("1.1") and before.get("1.1") == stage_keys.get("1.1") and "1.2" in stage_keys:
                hint = f"; to add or redo Stage 1.2 and keep its Stage 1.1 masks, run `ovlabel classify-masks {out}`"
            raise OvlabelError(
                f"'{out}' holds a run made with different settings (changed: {changed}); "
                f"pass --overwrite to relabel it with the new settings, or choose another --out{hint}"
            )
    redo = sorted(s for s, k in stage_keys.items() if before.get(s) != k)
    if cfg.overwrite:
        why = f"settings changed: {changed}" if prev.get("settings_key") != key else "same settings"
        reasons.append(f"--overwrite ({why}): every stage of every image")
    elif prev.get("settings_key") != key and redo:
        reasons.append(f"settings changed ({changed}): Stage {', '.join(redo)} of every image")
    elif prev.get("settings_key") != key:
        reasons.append(f"settings changed ({changed}): re-merging the stages, no model pass needed")
    return reasons


def finalize(
    layout: RunLayout, key: str, store, source, rows: list[dict], vocab, settings, lazy, cfg, summary,
    trusted: bool = True,
) -> None:
    """Rebuild manifest, masks.parquet, coco.json (and label maps not written during this run) from the
    parts; drop outputs of images no longer in the input; write overlays if asked; then mark run.json
    ``complete`` with counts and provenance. Skips the rewrite when nothing changed.

    ``trusted``: the run directory was left ``complete`` by the previous run. If not (it was killed), the
    parts are the only thing trusted: masks.parquet, coco.json and the manifest are rewritten and every
    label map is checked against its parts. Crash safety rests on three orderings: a part is written
    before its label map; an overlay is deleted before its label map changes (an overlay on disk was
    always rendered from the label map beside it); ``run.json`` says ``complete`` only after the rest.
    """
    for image_id, row in enumerate(rows, start=1):
        row["image_id"] = image_id
    ok = [r for r in rows if r["status"] == "ok"]
    doc = layout.read_run_json() or {}
    on_disk = _read_manifest_or_none(layout.manifest)
    summary.changes = image_changes(on_disk, rows) if on_disk is not None else {}  # {} = first run
    prev_rows = on_disk if trusted and doc.get("artifacts_settings_key") == key else None
    prev_sha = {r["file"]: r["sha256"] for r in prev_rows or []}
    # A label map not written by this run is trusted only if the last complete finalize, under these
    # settings, made it for the same image content; any other is repainted if it differs from its parts,
    # and always if the image's content changed (its overlay shows the old image).
    suspect = [
        r for r in ok
        if r["file"] not in summary.new_files
        and (prev_sha.get(r["file"]) != r["sha256"] or not (layout.root / r["label_file"]).exists())
    ]
    suspect_files = {r["file"] for r in suspect}
    last_sha = {r["file"]: r["sha256"] for r in on_disk or []}

    def per_image(selected):
        for r in selected:
            masks = store.merged(r["sha256"])
            if r["file"] in suspect_files:
                same_image = last_sha.get(r["file"]) == r["sha256"]
                lm = store.label_map(masks, r["height"], r["width"])
                write_label(layout, r["label_file"], lm, if_changed=same_image)
            yield r["image_id"], masks

    up_to_date = (
        prev_rows is not None and summary.new == 0 and without_quality(prev_rows) == rows
        and layout.masks.exists() and layout.coco.exists()
    )
    if up_to_date:
        for _ in per_image(suspect):
            pass
    else:
        info = {
            "description": f"ovlabel pseudo-labels (stages {', '.join(settings['stages'])}), "
                           f"vocabulary {settings['vocabulary']['source']}",
            "version": __version__,
        }
        written = write_masks_and_coco(layout, ok, per_image(ok), vocab.names, info)
        for r in ok:
            r.update(written.quality[r["image_id"]])
        write_manifest(layout.manifest, rows)
    summary.masks = sum(r["num_masks"] for r in ok)
    _prune(layout, set(store.keys.values()), ok)
    if cfg.overlays:  # a relabelled image lost its overlay when its label map changed
        write_overlays(layout, source.root, [r for r in ok if not _overlay_path(layout, r).exists()], vocab.names)

    models = lazy.identities() or doc.get("models")
    runtime = {"device": str(lazy.device), "precision": lazy.precision, "versions": _versions()}
    doc.update({
        "status": "complete",
        "artifacts_settings_key": key,
        "updated": _now(),
        "models": models,
        "counts": {
            "images": summary.total, "labelled": summary.labelled, "failed": len(summary.failures),
            "masks": summary.masks, "new_this_run": summary.new, "reused_this_run": summary.reused,
            "input_since_last_run": summary.changes or None,
        },
        "last_invocation": {"parameters": asdict(cfg), "runtime": runtime, "model_passes": summary.stats,
                            "recomputed_because": summary.reasons},
        "quality": quality_summary(layout),
        "label_maps": "uint8 PNG, value = class index (position in the vocabulary), 255 = unlabeled",
        "coco_category_id": "class index + 1 (COCO reserves 0)",
        "artifacts": {
            "manifest": layout.manifest.name, "masks": layout.masks.name, "coco": layout.coco.name,
            "labels": layout.labels.name + "/", "overlays": layout.overlays.name + "/" if cfg.overlays else None,
        },
    })
    if any(m and m.get("random_init") for m in (models or {}).values()):
        doc["note"] = TINY_NOTE
    else:
        doc.pop("note", None)
    write_json(layout.run_json, doc)


def _read_manifest_or_none(path: Path) -> list[dict] | None:
    try:
        return read_manifest(path)
    except FileNotFoundError:
        return None


def image_changes(before: list[dict] | None, rows: list[dict]) -> dict[str, int]:
    """Count the input's images against a previous manifest: ``new`` (path not in it), ``changed`` (same
    path, other content hash), ``removed`` (in it, not in the input), ``unchanged``."""
    old = {r["file"]: r["sha256"] for r in before or []}
    now = {r["file"]: r["sha256"] for r in rows}
    counts = {"new": 0, "changed": 0, "removed": len(set(old) - set(now)), "unchanged": 0}
    for f, sha in now.items():
        counts["new" if f not in old else "unchanged" if old[f] == sha else "changed"] += 1
    return counts


def write_label(layout: RunLayout, label_file: str, label_map, if_changed: bool = False) -> bool:
    """Write an image's label map (``label_file`` as in the manifest), removing its overlay first so that
    no overlay outlives the label map it was rendered from. With ``if_changed``, leave a file that already
    holds exactly ``label_map`` alone. Returns whether it wrote."""
    path = layout.root / label_file
    if if_changed and path.exists():
        try:
            if np.array_equal(read_label_png(path), label_map):
                return False
        except (OSError, ValueError):
            pass
    _overlay_path(layout, {"label_file": label_file}).unlink(missing_ok=True)
    write_label_png(path, label_map)
    return True


def _prune(layout: RunLayout, keys: set[str], ok: list[dict]) -> None:
    """Remove our own stale outputs: label maps and overlays of images no longer in the input, and
    part folders of other settings. Never touches anything outside the run directory."""
    keep_labels = {layout.root / r["label_file"] for r in ok}
    for folder, suffix in ((layout.labels, ".png"), (layout.overlays, ".jpg")):
        if not folder.is_dir():
            continue
        wanted = keep_labels if suffix == ".png" else {_overlay_path(layout, r) for r in ok}
        for f in folder.rglob(f"*{suffix}"):
            if f not in wanted:
                f.unlink()
    keep_parts = {r["sha256"] + ".parquet" for r in ok}
    if layout.parts.is_dir():
        for d in layout.parts.iterdir():
            if d.name not in keys:
                shutil.rmtree(d, ignore_errors=True)
            else:
                for f in d.glob("*.parquet"):
                    if f.name not in keep_parts:
                        f.unlink()


def _overlay_path(layout: RunLayout, row: dict) -> Path:
    rel = Path(row["label_file"]).relative_to("labels")
    return layout.overlays / rel.with_suffix(".jpg")


def write_overlays(layout: RunLayout, image_root: Path, rows: list[dict], class_names) -> int:
    """Write ``overlays/<rel>.jpg`` for labelled images (re-reading each source image). Returns the count
    written; images that can no longer be read are skipped with a warning."""
    from ovlabel.errors import ImageDecodeError
    from ovlabel.io.atomic import atomic_path
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.overlays import render_overlay

    written = 0
    for row in rows:
        dest = _overlay_path(layout, row)
        try:
            data, _ = read_file(Path(image_root) / row["file"])
            image = decode_image(data)
        except ImageDecodeError as exc:
            print(f"warning: no overlay for {row['file']}: {exc}", file=sys.stderr)
            continue
        label_map = read_label_png(layout.root / row["label_file"])
        with atomic_path(dest) as tmp:
            render_overlay(image, label_map, class_names).save(tmp, format="JPEG", quality=90)
        written += 1
    return written


def finalize_parts(layout: RunLayout, key: str, rows: list[dict], vocab: dict, description: str, summary) -> None:
    """Write masks.parquet, coco.json and manifest.parquet from the parts (streaming); repaint label maps
    not known to come from their row's part (a resumed or reverted image); remove outputs that no longer
    belong to the run. ``parts/<key>/labels.json`` records which part each label map was painted from.

    Shared by the stages whose parts are named by a digest of their inputs (``refine``, ``salience``):
    ``rows`` are manifest rows, each ok row with ``part`` (its part file path, removed here);
    ``summary.new_files`` names the images whose label maps were written by this run; ``summary.masks`` is
    set; ``vocab`` is :meth:`ovlabel.vocab.Vocabulary.to_json`."""
    ok = [r for r in rows if r["status"] == "ok"]
    record_path = layout.parts / key / "labels.json"
    try:
        painted = json.loads(record_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        painted = {}
    fresh = summary.new_files

    def per_image():
        for r in ok:
            masks, w, h = read_part(Path(r["part"]))
            part_name = Path(r["part"]).name
            label_path = layout.root / r["label_file"]
            if r["file"] not in fresh and (painted.get(r["file"]) != part_name or not label_path.exists()):
                overlay = layout.overlays / Path(r["label_file"]).relative_to("labels").with_suffix(".jpg")
                overlay.unlink(missing_ok=True)  # (a killed run may have changed the label map under it)
                write_label_png(label_path, masks.label_map(h, w))
            yield r["image_id"], masks

    info = {"description": description, "version": __version__}
    written = write_masks_and_coco(layout, ok, per_image(), vocab["classes"], info)
    summary.masks = written.count
    parts = {r["file"]: Path(r.pop("part")).name for r in ok}
    for r in ok:
        r.update(written.quality[r["image_id"]])
    if layout.manifest.exists():
        summary.changes = image_changes(read_manifest(layout.manifest), rows)
    write_manifest(layout.manifest, rows)
    write_json(record_path, parts)
    keep_labels = {layout.root / r["label_file"] for r in ok}
    if layout.labels.is_dir():
        for f in layout.labels.rglob("*.png"):
            if f not in keep_labels:
                f.unlink()
    if layout.overlays.is_dir():  # an overlay that no longer matches its label map is worse than none
        keep = {layout.overlays / Path(r["label_file"]).relative_to("labels").with_suffix(".jpg")
                for r in ok if r["file"] not in fresh}
        for f in layout.overlays.rglob("*.jpg"):
            if f not in keep:
                f.unlink()
    if layout.parts.is_dir():
        for d in layout.parts.iterdir():
            if d.name != key:
                shutil.rmtree(d, ignore_errors=True)
            else:
                wanted = set(parts.values())
                for f in d.glob("*.parquet"):
                    if f.name not in wanted:
                        f.unlink()
