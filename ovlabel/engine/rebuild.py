"""The one rebuild of a run's artifacts from its parts: manifest, masks.parquet, coco.json, label maps,
overlays, and the pruning of what no longer belongs to the run.

Crash safety rests on three orderings: a part is written before its label map; an overlay is deleted
before its label map changes (an overlay on disk was always rendered from the label map beside it); and
``run.json`` says ``complete`` only after everything here. A run that finds the previous one unfinished
trusts only the parts: it rewrites the dataset files and checks every label map against its parts.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from ovlabel import __version__
from ovlabel.artifacts import (
    FRAGMENT_SCHEMA,
    MANIFEST_QUALITY_COLUMNS,
    RunLayout,
    _maskset_from_table,
    read_label_png,
    read_manifest,
    without_quality,
    write_class_files,
    write_label_png,
    write_manifest,
)
from ovlabel.dataset import DatasetWriter, mask_fragment
from ovlabel.engine.cache import STAT_FIELDS, RunCache, save_images
from ovlabel.engine.store import PartStore, paint_id


def overlay_path(layout: RunLayout, label_file: str) -> Path:
    """``overlays/<rel>.jpg`` for a manifest ``label_file`` (``labels/<rel>.png``)."""
    return layout.overlays / Path(label_file).relative_to("labels").with_suffix(".jpg")


def write_label(layout: RunLayout, label_file: str, label_map: np.ndarray, if_changed: bool = False) -> bool:
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
    overlay_path(layout, label_file).unlink(missing_ok=True)
    write_label_png(path, label_map)
    return True


def image_changes(before: list[dict] | None, rows: list[dict]) -> dict[str, int]:
    """Count the input's images against a previous manifest: ``new`` (path not in it), ``changed`` (same
    path, other content hash), ``removed`` (in it, not in the input), ``unchanged``."""
    old = {r["file"]: r["sha256"] for r in before or []}
    now = {r["file"]: r["sha256"] for r in rows}
    counts = {"new": 0, "changed": 0, "removed": len(set(old) - set(now)), "unchanged": 0}
    for f, sha in now.items():
        counts["new" if f not in old else "unchanged" if old[f] == sha else "changed"] += 1
    return counts


def rebuild(layout: RunLayout, stage, store: PartStore, rows: list[dict], ids: dict[str, dict[str, str]],
            stats: dict[str, dict], summary, doc: dict, trusted: bool, cache: RunCache) -> None:
    """Make every artifact agree with the parts of the ``ok`` rows.

    ``rows``: the manifest rows in order; ``ids``: per ok file, its part ids; ``stats``: per ok file, its
    stat when it was hashed; ``summary.new_files``: label maps painted by this run; ``doc``: run.json as
    this run started it (its ``artifacts_settings_key`` is the previous completion's); ``trusted``: the
    previous run completed; ``cache``: what the previous rebuild derived (:mod:`ovlabel.engine.cache`).
    An unchanged image's rows of the dataset files come from the cache, a new or changed one's from its
    parts, so a rerun costs what changed. Skips rewriting the dataset files when nothing changed; sets
    ``summary.changes`` and ``summary.masks``; adds the quality columns to the rows it rewrites.
    """
    key = stage.key
    ok = [r for r in rows if r["status"] == "ok"]
    try:
        on_disk = read_manifest(layout.manifest)
    except FileNotFoundError:
        on_disk = None
    except (OSError, ValueError, KeyError) as exc:  # damaged: rewritten from the parts below
        print(f"warning: damaged {layout.manifest} ({type(exc).__name__}): rewriting it", file=sys.stderr)
        on_disk, trusted = None, False
    summary.changes = image_changes(on_disk, rows) if on_disk is not None else {}
    paint = {r["file"]: paint_id(key, ids[r["file"]]) for r in ok}
    last_sha = {r["file"]: r["sha256"] for r in on_disk or []}
    # A label map not painted by this run is trusted only if the cache says it was painted from the same
    # parts under the same settings by a run that completed; any other is repainted if it differs from its
    # parts, and always if the image's content changed (its overlay shows the old image).
    suspect = {
        r["file"] for r in ok
        if r["file"] not in summary.new_files
        and (not (trusted and cache.image(r["file"], paint[r["file"]])) or not (layout.root / r["label_file"]).exists())
    }
    reader = cache.fragments()

    def fragment(r) -> tuple[pa.Table, dict]:
        """The image's fragment and quality columns: cached if made from the same parts, else from them."""
        hit = cache.image(r["file"], paint[r["file"]])
        frag = None
        if hit is not None:
            frag = FRAGMENT_SCHEMA.empty_table() if hit["num_masks"] == 0 else reader.get(r["file"], hit["paint"])
        if frag is not None:
            masks = None
            quality = {c: hit[c] for c in MANIFEST_QUALITY_COLUMNS}
        else:
            parts, _, _ = store.read(ids[r["file"]])
            masks = stage.merge(parts, r["sha256"])
            frag, quality = mask_fragment(masks, stage.class_names, r["height"], r["width"])
        if r["file"] in suspect:
            masks = masks if masks is not None else _maskset_from_table(frag)
            lm = masks.label_map(r["height"], r["width"], policy=stage.paint)
            write_label(layout, r["label_file"], lm, if_changed=last_sha.get(r["file"]) == r["sha256"])
        return frag, quality

    def entry(r, quality) -> dict:
        return {"file": r["file"], "paint": paint[r["file"]], "sha256": r["sha256"], **_stat(stats, cache, r),
                "width": r["width"], "height": r["height"], "num_masks": r["num_masks"], **quality}

    prev_rows = on_disk if trusted and doc.get("artifacts_settings_key") == key else None
    up_to_date = (prev_rows is not None and summary.new == 0 and without_quality(prev_rows) == rows
                  and layout.masks.exists() and layout.coco.exists()
                  and all(cache.image(r["file"], paint[r["file"]]) for r in ok))
    if up_to_date:
        for r in ok:
            if r["file"] in suspect:
                fragment(r)
        fresh = [entry(r, {c: cache.images[r["file"]][c] for c in MANIFEST_QUALITY_COLUMNS}) for r in ok]
        if any(e != cache.images.get(e["file"]) for e in fresh):  # a file was touched: remember its new stat
            save_images(cache, fresh)
    else:
        info = {"description": stage.description, "version": __version__}
        with DatasetWriter(layout, ok, stage.class_names, info) as dw, cache.writer() as cw:
            for r in ok:
                frag, quality = fragment(r)
                r.update(quality)  # the label-quality estimate (ovlabel.quality)
                dw.add(r["image_id"], frag)
                cw.add(entry(r, quality), frag)
        write_manifest(layout.manifest, rows)
    summary.masks = sum(r["num_masks"] for r in ok)
    if not up_to_date or not layout.classes_txt.exists():
        write_class_files(layout.root, stage.class_names)  # classes.txt, id2label.json, legend.png
    _prune(layout, store, ok, ids)
    if stage.overlays:  # a relabelled image lost its overlay when its label map changed
        write_overlays(layout, stage.inputs.root, [r for r in ok if not overlay_path(layout, r["label_file"]).exists()],
                       stage.class_names)


def _stat(stats: dict, cache: RunCache, r: dict) -> dict:
    """The stat the image was hashed with: this run's, else the cached one (its content is unchanged)."""
    st = stats.get(r["file"])
    if st is not None:
        return dict(zip(STAT_FIELDS, st))
    old = cache.images.get(r["file"]) or {}
    return {k: old.get(k) if old.get("sha256") == r["sha256"] else None for k in STAT_FIELDS}


def _prune(layout: RunLayout, store: PartStore, ok: list[dict], ids: dict[str, dict[str, str]]) -> None:
    """Remove our own stale outputs: label maps, overlays and soft maps of images no longer labelled, part
    folders of other settings, and parts no labelled image uses. Never touches anything outside the run."""
    labels = {r["label_file"][len("labels/"):] for r in ok}  # paths relative to labels/, with ".png"
    stems = {f[:-4] for f in labels}
    for folder, want in ((layout.labels, labels), (layout.overlays, {s + ".jpg" for s in stems}),
                         (layout.soft, {s + ".npz" for s in stems})):
        for rel in _files(folder):
            if rel not in want:
                os.unlink(os.path.join(folder, rel))
    if not layout.parts.is_dir():
        return
    wanted = {key: {ids[r["file"]][stage] + ".parquet" for r in ok} for stage, key in store.keys.items()}
    for d in os.scandir(layout.parts):
        if d.name not in wanted:
            shutil.rmtree(d.path, ignore_errors=True) if d.is_dir() else os.unlink(d.path)
            continue
        for f in os.scandir(d.path):
            if f.name not in wanted[d.name]:
                os.unlink(f.path)


def _files(folder: Path) -> list[str]:
    """Every file under ``folder``, as POSIX paths relative to it (none if it does not exist)."""
    out = []
    for dirpath, _, filenames in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return out


def write_overlays(layout: RunLayout, image_root: Path, rows: list[dict], class_names) -> int:
    """Write ``overlays/<rel>.jpg`` for labelled images (re-reading each source image). Returns the count
    written; images that can no longer be read are skipped with a warning."""
    from ovlabel.errors import ImageDecodeError
    from ovlabel.io.atomic import atomic_path
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.io.names import image_path
    from ovlabel.overlays import render_overlay

    written = 0
    for row in rows:
        dest = overlay_path(layout, row["label_file"])
        try:
            data, _ = read_file(image_path(image_root, row["file"]))
            image = decode_image(data, max_pixels=None)  # a labelled image: the run let it through
        except ImageDecodeError as exc:
            print(f"warning: no overlay for {row['file']}: {exc}", file=sys.stderr)
            continue
        label_map = read_label_png(layout.root / row["label_file"])
        with atomic_path(dest) as tmp:
            render_overlay(image, label_map, class_names).save(tmp, format="JPEG", quality=90)
        written += 1
    return written
