"""Stage 2 training data from a pseudo-label run directory: per-patch pseudo labels (FMbSeg §3.3, §4.1).

The run's masks are its merged masks: FMbSeg's random subsampling of Stage 1.2 masks (§4.1) already
happened when the run was built (:mod:`ovlabel.merge`, the run's ``stage12_ratio``), so train-align samples
nothing again. Each image's masks are painted into a label map exactly as the run's ``labels/*.png`` are,
with the run's own ``paint`` policy (``settings.merge.paint``; ``score`` for runs without Stage 1.2). A patch
then takes the class covering most of its pixels, provided labelled pixels cover at least
``min_labelled`` of it; other patches are ignored (label -1). The paper does not describe patches without a
label; ignoring them is ovlabel's choice (docs/stage2.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX, RunLayout, open_complete_run, read_manifest, read_masks
from ovlabel.errors import OvlabelError
from ovlabel.features import patch_grid
from ovlabel.io.names import image_path, recorded_path
from ovlabel.masks import MaskSet
from ovlabel.vocab import Templates, VocabClass, Vocabulary


@dataclass
class TrainImage:
    """One training image: absolute ``path``, ``sha256`` (from the manifest), ``grid`` (rows, cols), and
    ``labels`` int64 ``(rows * cols,)``: class index per patch (row-major), -1 = ignored."""

    file: str
    path: Path
    sha256: str
    grid: tuple[int, int]
    labels: np.ndarray


@dataclass
class TrainSet:
    """The images with at least one labelled patch, the run's vocabulary and templates, its run.json."""

    images: list[TrainImage]
    vocab: Vocabulary
    templates: Templates
    run: dict
    skipped: list[tuple[str, str]]

    def class_counts(self) -> np.ndarray:
        """Labelled patches per vocabulary class, int64 ``(C,)``."""
        out = np.zeros(len(self.vocab), np.int64)
        for im in self.images:
            lab = im.labels[im.labels >= 0]
            out += np.bincount(lab, minlength=len(self.vocab))
        return out


def vocabulary_from_run(run: dict) -> Vocabulary:
    """The :class:`Vocabulary` recorded in a run's ``settings`` (``Vocabulary.to_json`` form)."""
    v = run["settings"]["vocabulary"]
    syn = v.get("synonyms", {})
    classes = tuple(VocabClass(n, tuple(syn.get(n, [n]))) for n in v["classes"])
    return Vocabulary(classes=classes, source=v["source"])


def templates_from_run(run: dict) -> Templates:
    t = run["settings"]["templates"]
    return Templates(name=t["name"], templates=tuple(t["templates"]))


def read_run(run_dir: str | Path) -> tuple[RunLayout, dict]:
    """A complete pseudo-label run: its layout and run.json; OvlabelError if it is not one."""
    layout, run, _ = open_complete_run(run_dir, masks=True)
    return layout, run


def paint_policy(run: dict) -> str:
    """The paint policy the run's label maps were painted with (``settings.merge.paint``, else ``score``)."""
    return ((run.get("settings") or {}).get("merge") or {}).get("paint", "score")


def patch_labels(label_map: np.ndarray, grid: tuple[int, int], min_labelled: float) -> np.ndarray:
    """Per-patch class from a uint8 ``(H, W)`` label map (255 = unlabeled): the class with the largest
    area in the patch's cell (ties: the lower class index), or -1 when labelled pixels cover less than
    ``min_labelled`` of the cell. Returns int64 ``(rows * cols,)``, row-major."""
    rows, cols = grid
    h, w = label_map.shape
    if h < rows or w < cols:  # a tiny image: every cell needs at least one pixel
        ry, rx = -(-rows // h), -(-cols // w)
        label_map = np.repeat(np.repeat(label_map, ry, axis=0), rx, axis=1)
        h, w = label_map.shape
    row_of = (np.arange(h) * rows) // h  # cell row of each pixel row (floor(y * rows / H))
    col_of = (np.arange(w) * cols) // w
    present = np.unique(label_map)
    present = present[present != IGNORE_INDEX]
    if not len(present):
        return np.full(rows * cols, -1, np.int64)
    compact = np.full(256, len(present), np.int64)  # unlabeled -> the extra bin
    compact[present] = np.arange(len(present))
    nb = len(present) + 1
    cell = (row_of[:, None] * cols + col_of[None, :]).ravel()
    counts = np.bincount(cell * nb + compact[label_map.ravel()], minlength=rows * cols * nb).reshape(rows * cols, nb)
    labelled = counts[:, :-1].sum(axis=1)
    total = counts.sum(axis=1)
    best = present[counts[:, :-1].argmax(axis=1)].astype(np.int64)
    return np.where((labelled > 0) & (labelled >= min_labelled * total), best, -1)


def load_train_set(
    run_dir: str | Path,
    resolution: int,
    patch: int,
    max_aspect: float,
    min_labelled: float,
    image_root: str | Path | None = None,
    progress: bool = False,
) -> TrainSet:
    """Patch labels for every labelled image of a pseudo-label run (images are not read here; their
    content hash is checked when their features are computed). The run's masks are painted with its own
    paint policy (:func:`paint_policy`)."""
    layout, run = read_run(run_dir)
    vocab = vocabulary_from_run(run)
    root = Path(image_root).expanduser().resolve() if image_root else recorded_path(run["input"]["root"])
    rows = [r for r in read_manifest(layout.manifest) if r["status"] == "ok"]
    masks = read_masks(layout.masks)
    paint = paint_policy(run)
    from tqdm import tqdm

    images, skipped = [], []
    for r in tqdm(rows, desc="patch labels", unit="img", disable=not progress, dynamic_ncols=True):
        ms = masks.get(r["image_id"], MaskSet.empty())
        if not len(ms):
            skipped.append((r["file"], "no masks"))
            continue
        h, w = r["height"], r["width"]
        grid = patch_grid(h, w, resolution, patch, max_aspect)
        labels = patch_labels(ms.label_map(h, w, policy=paint), grid, min_labelled)
        if not (labels >= 0).any():
            skipped.append((r["file"], "no patch is labelled"))
            continue
        images.append(TrainImage(r["file"], image_path(root, r["file"]), r["sha256"], grid, labels))
    if not images:
        raise OvlabelError(f"run '{layout.root}' has no image with a labelled patch to train on ({len(rows)} labelled images)")
    if not root.is_dir():
        print(f"warning: image root '{root}' does not exist; pass --images to say where the run's images are", file=sys.stderr)
    return TrainSet(images, vocab, templates_from_run(run), run, skipped)
