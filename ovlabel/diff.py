"""``ovlabel diff RUN_A RUN_B``: how far two runs' label maps disagree (label drift), for CI.

Matching: images by their path relative to the image root (the manifests' ``file``), classes by name
through each run's vocabulary (``run.json`` settings), so a reordered or extended vocabulary compares
correctly; a class known to only one run simply has no pixels in the other.

Measures, with A the earlier run and B the later one, over images labelled in both:

- per image: **pixel agreement**, the fraction of pixels holding the same value (unlabeled, 255, is a
  value like any class), and **IoU**, the mean over the classes present in either map of
  ``|A=c and B=c| / |A=c or B=c|`` (1 when neither map labels any pixel);
- per class: IoU summed over images (sum of intersections / sum of unions) and its pixel counts in A and B;
- **drift** = 1 - pixel agreement over all pixels of the images whose input file is identical in both
  runs (same SHA-256). Images whose content changed are scored and listed but left out of the drift and
  the per-class table: their labels are expected to change. Images labelled in only one run are listed
  as added or removed.

With a deterministic pipeline (same inputs, settings and models), the drift is exactly 0.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX, open_complete_run, read_label_png, read_manifest
from ovlabel.evaluate.metrics import image_counts, image_miou

#: ``ovlabel diff`` exit status when the drift exceeds ``--fail-above``.
DRIFT_EXIT_CODE = 3


@dataclass(frozen=True)
class _Run:
    root: Path
    doc: dict
    rows: dict[str, dict]  # file -> manifest row, every status
    classes: list[str]


def _load(path: str | Path) -> _Run:
    layout, doc, classes = open_complete_run(path)
    return _Run(layout.root, doc, {r["file"]: r for r in read_manifest(layout.manifest)}, classes)


@dataclass
class ImageDiff:
    """One image labelled in both runs. ``agreement``/``iou`` are None when it could not be compared
    (``note`` says why)."""

    file: str
    input_changed: bool
    pixels: int = 0
    changed_pixels: int = 0
    agreement: float | None = None
    iou: float | None = None
    note: str | None = None


@dataclass
class DiffReport:
    """Everything ``ovlabel diff`` prints; :meth:`to_json` is its ``--json`` file (no timestamps: two diffs
    of the same runs give the same bytes)."""

    run_a: str
    run_b: str
    drift: float
    pixel_agreement: float | None
    mean_image_iou: float | None
    mean_class_iou: float | None
    images_compared: int
    images_same_input: int
    images_label_changed: int
    input_changed: list[str]
    added: list[str]
    removed: list[str]
    not_compared: list[str]
    per_image: list[ImageDiff] = field(default_factory=list)
    per_class: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["definition"] = ("drift = 1 - pixel agreement over the images whose input is identical in both runs; "
                           "unlabeled (255) pixels count as a value")
        return d

    def most_changed(self, n: int) -> list[ImageDiff]:
        scored = [d for d in self.per_image if d.agreement is not None and d.changed_pixels]
        return sorted(scored, key=lambda d: (d.agreement, d.file))[:n]

    def worst_classes(self, n: int) -> list[dict]:
        scored = [c for c in self.per_class if c["iou"] is not None and c["iou"] < 1]
        return sorted(scored, key=lambda c: (c["iou"], c["name"]))[:n]

    def describe(self, top: int = 10) -> str:
        agree = "n/a" if self.pixel_agreement is None else f"{self.pixel_agreement:.4f}"
        lines = [
            f"A: {self.run_a}",
            f"B: {self.run_b}",
            f"images: {self.images_compared} in both ({self.images_same_input} with the same input, "
            f"{len(self.input_changed)} changed), {len(self.added)} added, {len(self.removed)} removed",
            f"drift {self.drift:.4f} (pixel agreement {agree}); mean image IoU {_f(self.mean_image_iou)}, "
            f"mean class IoU {_f(self.mean_class_iou)}; {self.images_label_changed} of "
            f"{self.images_same_input} same-input images have changed labels",
        ]
        for title, items in (("added", self.added), ("removed", self.removed), ("input changed", self.input_changed),
                             ("not compared (see the JSON report)", self.not_compared)):
            if items:
                lines.append(f"{title}: {', '.join(items[:top])}" + (f" ... (+{len(items) - top})" if len(items) > top else ""))
        worst = self.most_changed(top)
        if worst:
            lines.append("most changed images:")
            lines += [f"  {d.file}  agreement {d.agreement:.4f}  IoU {_f(d.iou)}"
                      + ("  (input changed)" if d.input_changed else "") for d in worst]
        classes = self.worst_classes(top)
        if classes:
            lines.append("classes with the lowest IoU (same-input images):")
            lines += [f"  {c['name']}  IoU {_f(c['iou'])}  pixels A {c['pixels_a']}  B {c['pixels_b']}" for c in classes]
        return "\n".join(lines)

    def to_markdown(self, top: int = 10) -> str:
        """A report for a CI job summary (GitHub's ``$GITHUB_STEP_SUMMARY``)."""
        agree = "n/a" if self.pixel_agreement is None else f"{self.pixel_agreement:.4f}"
        out = [
            "## ovlabel label drift", "",
            "| | |", "|---|---|",
            f"| drift (1 - pixel agreement, same-input images) | **{self.drift:.4f}** |",
            f"| pixel agreement | {agree} |",
            f"| mean image IoU / mean class IoU | {_f(self.mean_image_iou)} / {_f(self.mean_class_iou)} |",
            f"| images in both runs | {self.images_compared} ({self.images_same_input} same input) |",
            f"| same-input images with changed labels | {self.images_label_changed} |",
            f"| images with changed input | {len(self.input_changed)} |",
            f"| images added / removed | {len(self.added)} / {len(self.removed)} |", "",
        ]
        worst = self.most_changed(top)
        if worst:
            out += ["| most changed image | agreement | IoU | input changed |", "|---|---|---|---|"]
            out += [f"| `{d.file}` | {d.agreement:.4f} | {_f(d.iou)} | {'yes' if d.input_changed else 'no'} |"
                    for d in worst]
            out.append("")
        classes = self.worst_classes(top)
        if classes:
            out += ["| class | IoU | pixels A | pixels B |", "|---|---|---|---|"]
            out += [f"| {c['name']} | {_f(c['iou'])} | {c['pixels_a']} | {c['pixels_b']} |" for c in classes]
            out.append("")
        return "\n".join(out)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _lut(classes: list[str], union: dict[str, int]) -> np.ndarray:
    """uint8 label value -> union class index; 255 and values outside the vocabulary -> len(union)."""
    lut = np.full(256, len(union), np.int32)
    for i, name in enumerate(classes[:IGNORE_INDEX]):
        lut[i] = union[name]
    return lut


def _compare(f: str, a: _Run, b: _Run, luts, k: int):
    """``(ImageDiff, confusion counts (k+1, k+1) or None)`` for one file labelled in both runs."""
    ra, rb = a.rows[f], b.rows[f]
    d = ImageDiff(file=f, input_changed=ra["sha256"] != rb["sha256"])
    try:
        la, lb = read_label_png(a.root / ra["label_file"]), read_label_png(b.root / rb["label_file"])
    except (OSError, ValueError) as exc:
        d.note = f"unreadable label map: {exc}"
        return d, None
    if la.shape != lb.shape or la.ndim != 2:
        d.note = f"label maps differ in size: {la.shape[::-1]} in A, {lb.shape[::-1]} in B"
        return d, None
    counts = image_counts(luts[1][lb], luts[0][la], k, ignore_index=-1)  # rows: A, columns: B
    agree = int(np.trace(counts))
    d.pixels, d.changed_pixels = int(la.size), int(la.size) - agree
    d.agreement = agree / la.size if la.size else 1.0
    d.iou = image_miou(counts, k, empty=1.0)
    return d, counts


def _inter_union(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    inter = np.diag(counts)[:k].astype(np.float64)
    return inter, counts[:k].sum(1) + counts[:, :k].sum(0) - inter


def diff_runs(run_a: str | Path, run_b: str | Path, workers: int | None = None) -> DiffReport:
    """Compare the label maps of two complete runs (see the module docstring for the measures).

    Raises :class:`OvlabelError` when either folder is not a complete ovlabel run. Label maps are read
    by ``workers`` threads (default: up to 8).
    """
    a, b = _load(run_a), _load(run_b)
    union: dict[str, int] = {}
    for name in a.classes + b.classes:
        union.setdefault(name, len(union))
    k = len(union)
    luts = (_lut(a.classes, union), _lut(b.classes, union))
    ok_a = {f for f, r in a.rows.items() if r["status"] == "ok"}
    ok_b = {f for f, r in b.rows.items() if r["status"] == "ok"}
    both = sorted(ok_a & ok_b)
    total = np.zeros((k + 1, k + 1), np.int64)  # over same-input images
    per_image = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for d, counts in pool.map(lambda f: _compare(f, a, b, luts, k), both):
            per_image.append(d)
            if counts is not None and not d.input_changed:
                total += counts
    same = [d for d in per_image if not d.input_changed and d.agreement is not None]
    agreement = float(np.trace(total) / total.sum()) if total.sum() else None
    inter, uni = _inter_union(total, k)
    names = list(union)
    per_class = [
        {"name": names[c], "iou": float(inter[c] / uni[c]) if uni[c] else None,
         "pixels_a": int(total[c].sum()), "pixels_b": int(total[:, c].sum()),
         "in_a": names[c] in a.classes, "in_b": names[c] in b.classes}
        for c in range(k)
    ]
    class_ious = [c["iou"] for c in per_class if c["iou"] is not None]
    return DiffReport(
        run_a=str(a.root), run_b=str(b.root),
        drift=0.0 if agreement is None else 1.0 - agreement,
        pixel_agreement=agreement,
        mean_image_iou=float(np.mean([d.iou for d in same])) if same else None,
        mean_class_iou=float(np.mean(class_ious)) if class_ious else None,
        images_compared=len(both), images_same_input=len(same),
        images_label_changed=sum(1 for d in same if d.changed_pixels),
        input_changed=[d.file for d in per_image if d.input_changed],
        added=sorted(ok_b - ok_a), removed=sorted(ok_a - ok_b),
        not_compared=[d.file for d in per_image if d.agreement is None and not d.input_changed],
        per_image=per_image, per_class=per_class,
    )
