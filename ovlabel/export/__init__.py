"""``ovlabel export``: a run's labels in the formats users train and review with.

:func:`export_run` reads one complete run's artifacts (no model, no torch), streams its images once, and
lets each requested format write ``OUT/<format>/``. One module per format (``yolo``, ``voc``, ``mmseg``,
``hf``, ``fiftyone``, ``labelstudio``) on a common core (:mod:`ovlabel.export.core`: the run as a
stream, classes, split, names, images; :mod:`ovlabel.export.base`: the output folder, resume, extras).
docs/export.md describes every layout and how to load it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ovlabel.config.export import FORMATS, ExportConfig, parse_formats
from ovlabel.errors import OvlabelError

__all__ = ["FORMATS", "ExportConfig", "ExportSummary", "export_run"]

_WRITERS = {
    "yolo-seg": ("ovlabel.export.yolo", "YoloSegWriter"),
    "voc": ("ovlabel.export.voc", "VocWriter"),
    "mmseg": ("ovlabel.export.mmseg", "MmsegWriter"),
    "hf": ("ovlabel.export.hf", "HfWriter"),
    "fiftyone": ("ovlabel.export.fiftyone", "FiftyOneWriter"),
    "labelstudio": ("ovlabel.export.labelstudio", "LabelStudioWriter"),
}


@dataclass
class ExportSummary:
    """What :func:`export_run` did: per format its folder, ``state`` (new / resumed / replaced), images
    written and skipped (already there); ``images`` exported, ``failed`` (the run could not label them),
    ``classes`` (exported class names)."""

    run: Path
    out: Path
    images: int
    failed: int
    classes: list[str]
    formats: dict[str, dict] = field(default_factory=dict)

    def describe(self) -> str:
        head = (f"exported {self.images} images ({len(self.classes)} classes) of run '{self.run}'"
                + (f"; {self.failed} images the run could not label are left out" if self.failed else ""))
        rows = [f"  {fmt:12} {d['path']}  ({d['state']}: {d['written']} written, {d['skipped']} already there"
                + (f", {d['notes']}" if d.get("notes") else "") + ")" for fmt, d in self.formats.items()]
        return "\n".join([head, *rows])


def _inside(a: Path, b: Path) -> bool:
    """Whether path ``a`` is ``b`` or lies under it."""
    return a == b or b in a.parents


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, formats, cfg: ExportConfig | None = None,
               progress: bool = False) -> ExportSummary:
    """Export the complete run ``run_dir`` into ``out/<format>/`` for each of ``formats`` (names from
    :data:`FORMATS`, or comma lists of them) with ``cfg``. Atomic per file, resumable (a rerun with the same
    run and settings keeps what is there and gives the same bytes), deterministic. OvlabelError (exit 2 in
    the CLI) for a folder that is not a complete run, an unknown format, an output folder inside the run,
    images that moved (with --images copy/link), an existing export made with other settings (unless
    ``cfg.overwrite``), or a missing optional package (naming the ``export`` extra)."""
    from ovlabel.artifacts import write_class_files
    from ovlabel.export.core import check_images, open_run
    from ovlabel.io.lock import remove_stale_temps, run_lock

    cfg = cfg or ExportConfig()
    formats = parse_formats([formats] if isinstance(formats, str) else formats)
    run = open_run(run_dir, cfg)
    out = Path(out).expanduser().resolve()
    if _inside(out, run.layout.root):
        raise OvlabelError(f"--out '{out}' is inside the run '{run.layout.root}'; an export never writes into a run, "
                           f"choose a folder outside it")
    for fmt in formats:
        if _inside(run.layout.root, out / fmt) or _inside(run.image_root.resolve(), out / fmt):
            raise OvlabelError(f"--out '{out}': its '{fmt}' folder would contain the run or its images; choose another --out")
    writers = []
    for fmt in formats:
        module, cls = _WRITERS[fmt]
        writers.append(getattr(importlib.import_module(module), cls)(out, run, cfg))
    check_images(run, cfg.images)

    summary = ExportSummary(run.layout.root, out, len(run.items), run.failed, list(run.classmap.names))
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "export"):
        states = {}
        for w in writers:
            states[w.name] = w.prepare()
            remove_stale_temps(w.root)
        items = run.stream()
        if progress:
            from tqdm import tqdm

            items = tqdm(items, total=len(run.items), desc="export", unit="img")
        try:
            for item in items:
                for w in writers:
                    if w.done(item):
                        w.skipped += 1
                    else:
                        w.write(item)
                        w.written += 1
                item.release()
            for w in writers:
                w.finish()
                write_class_files(w.root, w.class_names)
                w.complete()
        finally:
            for w in writers:
                w.close()
    for w in writers:
        notes = f"{w.dropped} masks of 1-2 pixels have no polygon" if getattr(w, "dropped", 0) else ""
        summary.formats[w.name] = {"path": str(w.root), "state": states[w.name], "written": w.written,
                                   "skipped": w.skipped, "notes": notes}
    return summary
