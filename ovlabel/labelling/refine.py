"""``refine``: dense-CRF refinement of any run's label maps into a new run directory, as a stage of the run
engine. The input run is only read.

For each labelled image the unaries come from the parent's stored soft map (``RUN/soft/``) when there is
one, else from its label map smoothed by a Gaussian (seed 004 §3.3); the CRF (:mod:`ovlabel.crf`) decides
each pixel, and the refined map becomes one mask per class (source ``refine``, score = the mean CRF
marginal over the mask). pydensecrf runs on the CPU in one thread, so ``workers`` processes refine images
in parallel. An image's part is named by a digest of what its result depends on (the image bytes, the
parent's label map and soft map), so a changed parent image is redone and nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ovlabel.config import CRFConfig, RefineConfig
from ovlabel.engine import Output, Stage, Worker, execute, from_run, settings_key
from ovlabel.engine.store import digest
from ovlabel.engine.summary import RunSummary

#: ``source`` of the masks refine writes.
SOURCE_REFINE = "refine"


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RefineWorker(Worker):
    """The CRF on the CPU (no model)."""

    device = "cpu"

    def __init__(self, crf: CRFConfig, num_classes: int):
        self.crf, self.num_classes = crf, num_classes

    def process(self, images, works) -> list[Output | str]:
        out = []
        for image, work in zip(images, works):
            try:
                out.append(self._refine(image, work.item.parent))
            except Exception as exc:  # recorded in the manifest; the run goes on
                out.append(f"refine error: {type(exc).__name__}: {exc}")
        return out

    def _refine(self, image: np.ndarray, parent: dict) -> Output | str:
        from ovlabel.artifacts import read_label_png, read_soft_map
        from ovlabel.crf import refine_label_map
        from ovlabel.masks import MaskSet

        label_map = read_label_png(Path(parent["label"]))
        h, w = parent["height"], parent["width"]
        if label_map.ndim != 2 or label_map.shape != (h, w) or image.shape[:2] != label_map.shape:
            return (f"size mismatch: image {image.shape[1]}x{image.shape[0]}, parent label map "
                    f"{label_map.shape[1]}x{label_map.shape[0]}, manifest {w}x{h}")
        try:
            soft = read_soft_map(Path(parent["soft"])) if parent["soft"] else None
        except (ValueError, OSError) as exc:
            return f"unreadable soft map: {exc}"
        for what, values in (("parent label map", label_map[label_map != 255]), ("soft map", soft[1] if soft else [])):
            if len(values) and int(np.max(values)) >= self.num_classes:
                return f"{what} holds class index {int(np.max(values))} but the vocabulary has {self.num_classes} classes"
        refined, confidence = refine_label_map(image, label_map, self.crf, soft)
        classes = [int(c) for c in np.unique(refined) if c != 255]
        masks = np.stack([refined == c for c in classes]) if classes else np.zeros((0, *refined.shape), bool)
        scores = [float(confidence[m].mean()) for m in masks]
        ms = MaskSet.from_dense(masks, classes, scores, SOURCE_REFINE) if classes else MaskSet.empty()
        return Output({SOURCE_REFINE: ms}, refined.shape)


class RefineStage(Stage):
    """Refine every labelled image of a parent run."""

    def __init__(self, parent_dir, cfg: RefineConfig):
        inputs = from_run(parent_dir, cfg.images)
        p_doc, p_rows = inputs.parent_doc, {r["file"]: r for r in inputs.parent_rows}
        p_layout = inputs.parent_layout
        vocab = p_doc["settings"]["vocabulary"]
        soft = 0
        for item in inputs.items:
            if item.reason:
                continue
            label = p_layout.root / item.label_file
            if not label.is_file():
                item.reason = f"label map {item.label_file} is missing from the parent run"
                continue
            soft_map = p_layout.soft_map(item.label_file) if cfg.crf.use_soft else None
            soft_map = soft_map if soft_map is not None and soft_map.is_file() else None
            soft += soft_map is not None
            row = p_rows[item.file]
            item.parent = {"label": str(label), "soft": str(soft_map) if soft_map else None,
                           "width": row["width"], "height": row["height"]}
        settings = {
            "stages": list(p_doc["settings"].get("stages", [])) + [SOURCE_REFINE],
            "vocabulary": vocab,
            "parent_settings_key": p_doc.get("settings_key"),
            "refine": asdict(cfg.crf),
        }
        parent = {"path": str(p_layout.root), "settings_key": p_doc.get("settings_key"),
                  "command": p_doc.get("command"), "ovlabel_version": p_doc.get("ovlabel_version")}
        self.cfg, self._ids = cfg, {}
        super().__init__(
            command="refine", inputs=inputs, class_names=vocab["classes"], settings=settings,
            keys={SOURCE_REFINE: settings_key(settings)},
            description=f"ovlabel refined labels (stages {', '.join(settings['stages'])}), vocabulary {vocab.get('source')}",
            parameters=asdict(cfg), verb="refined", batch_size=1, device="cpu", overwrite=cfg.overwrite,
            overlays=cfg.overlays, progress=cfg.progress, extra={"parent": parent, "models": p_doc.get("models")},
            note=f"parent run: {p_doc['note']}" if p_doc.get("note") else None, soft_inputs=soft, **cfg.execution(),
        )

    def worker(self, device: str) -> RefineWorker:
        return RefineWorker(self.cfg.crf, len(self.class_names))

    def part_ids(self, item, sha256):
        if item.file not in self._ids:
            p = item.parent
            self._ids[item.file] = digest(sha256, _file_digest(p["label"]), _file_digest(p["soft"]) if p["soft"] else "")
        return {SOURCE_REFINE: self._ids[item.file]}


def refine(run_dir: str | Path, out: str | Path, cfg: RefineConfig) -> RunSummary:
    """Refine every labelled image of the run ``run_dir`` into the new run ``out``.

    Raises :class:`OvlabelError` for a bad input run or output folder, or when another process is writing
    ``out``; an image that cannot be refined (missing, changed since the parent run, undecodable, damaged
    parent label map) is recorded as failed and skipped.
    """
    return execute(RefineStage(run_dir, cfg), out)
