"""Run-level bookkeeping: ``run.json`` provenance and the end-of-run rebuild of dataset artifacts."""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from ovlabel import __version__
from ovlabel.artifacts import (
    RunLayout,
    read_manifest,
    read_part,
    write_label_png,
    write_manifest,
    write_masks_and_coco,
)
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
    layout: RunLayout, prev: dict | None, inputs, source, settings: dict, key: str, command: str = "pseudo-label"
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
        "settings": settings,
    })
    if prev and prev.get("settings_key") != key:
        doc.pop("models", None)
    write_json(layout.run_json, doc)


def finalize(layout: RunLayout, key: str, source, rows: list[dict], vocab, settings, lazy, cfg, summary) -> None:
    """Rebuild manifest, masks.parquet, coco.json (and label maps not written during this run) from the
    parts; drop outputs of images no longer in the input; write overlays if asked; then mark run.json
    ``complete`` with counts and provenance. Skips the rewrite when nothing changed."""
    for image_id, row in enumerate(rows, start=1):
        row["image_id"] = image_id
    ok = [r for r in rows if r["status"] == "ok"]
    doc = layout.read_run_json() or {}
    same_settings = doc.get("artifacts_settings_key") == key and layout.manifest.exists()
    prev_rows = read_manifest(layout.manifest) if same_settings else None
    prev_sha = {r["file"]: r["sha256"] for r in prev_rows or []}
    stale_labels = {
        r["file"] for r in ok
        if r["file"] not in summary.new_files
        and (prev_sha.get(r["file"]) != r["sha256"] or not (layout.root / r["label_file"]).exists())
    }

    def per_image(selected):
        for r in selected:
            masks, w, h = read_part(layout.part(key, r["sha256"]))
            if r["file"] in stale_labels:
                write_label_png(layout.root / r["label_file"], masks.label_map(h, w))
            yield r["image_id"], masks

    up_to_date = summary.new == 0 and prev_rows == rows and layout.masks.exists() and layout.coco.exists()
    if up_to_date:
        for _ in per_image([r for r in ok if r["file"] in stale_labels]):
            pass
    else:
        info = {
            "description": f"ovlabel pseudo-labels (stages {', '.join(settings['stages'])}), vocabulary {vocab.source}",
            "version": __version__,
        }
        write_masks_and_coco(layout, ok, per_image(ok), vocab.names, info)
        write_manifest(layout.manifest, rows)
    summary.masks = sum(r["num_masks"] for r in ok)
    _prune(layout, key, ok)
    relabelled = summary.new_files | stale_labels
    if cfg.overlays:
        todo = [r for r in ok if r["file"] in relabelled or not _overlay_path(layout, r).exists()]
        write_overlays(layout, source.root, todo, vocab.names)
    else:  # an overlay that no longer matches its label map is worse than none
        for r in ok:
            if r["file"] in relabelled:
                _overlay_path(layout, r).unlink(missing_ok=True)

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
        },
        "last_invocation": {"parameters": asdict(cfg), "runtime": runtime, "model_passes": summary.stats},
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


def _prune(layout: RunLayout, key: str, ok: list[dict]) -> None:
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
            if d.name != key:
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
    from ovlabel.artifacts import read_label_png
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
