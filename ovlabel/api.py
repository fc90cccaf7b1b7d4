"""ovlabel from Python: the labelling commands as functions, and a finished run as an object.

::

    import ovlabel

    run = ovlabel.label("images/", vocab="rocket,launch tower,sky", out="runs/launch", models="tiny")
    print(run.summary.describe())
    for row, masks in run.masks():          # one MaskSet per labelled image (RLE masks, classes, scores)
        print(row["file"], [run.classes[c] for c in masks.class_index])
    label_map = run.label_map("rocket.jpg")  # uint8 (H, W), 255 = unlabeled

Settings are the fields of the command's config (``ovlabel.config``), as keywords; nested configs take a
dict (``detect={"resolution": 448}``); ``config=`` reads a TOML/JSON file first, as ``--config`` does.
Every function writes a normal run directory (resumable, with run.json) and returns its :class:`Run`.
``loaded=`` takes model wrappers you built yourself (``ovlabel.models.registry.load_model``) instead of
loading the ones the settings name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ovlabel.artifacts import open_complete_run, read_label_png, read_manifest, read_masks
from ovlabel.errors import OvlabelError
from ovlabel.masks import MaskSet


class Run:
    """A run directory: its provenance, images, masks and label maps (read from its artifacts)."""

    def __init__(self, path: str | Path, summary=None):
        self.layout, info, classes = open_complete_run(path)
        self.path = self.layout.root
        #: what the call that made this object did (:class:`ovlabel.engine.RunSummary`), None for :func:`open_run`
        self.summary = summary
        #: run.json
        self.info: dict = info
        #: the vocabulary: class names in label-map order
        self.classes: list[str] = classes

    def images(self) -> list[dict]:
        """The manifest: one dict per input image (file, sha256, width, height, status, reason, label_file, ...)."""
        return read_manifest(self.layout.manifest)

    def masks(self) -> Iterator[tuple[dict, MaskSet]]:
        """``(manifest row, MaskSet)`` for every labelled image, in manifest order."""
        by_id = read_masks(self.layout.masks) if self.layout.masks.exists() else {}
        for row in self.images():
            if row["status"] == "ok":
                yield row, by_id.get(row["image_id"], MaskSet.empty())

    def label_map(self, file: str) -> np.ndarray:
        """The uint8 ``(H, W)`` label map of image ``file`` (its path relative to the image root)."""
        for row in self.images():
            if row["file"] == file:
                if row["status"] != "ok":
                    raise OvlabelError(f"'{file}' was not labelled: {row['reason']}")
                return read_label_png(self.layout.root / row["label_file"])
        raise OvlabelError(f"'{file}' is not an image of the run '{self.path}'")

    def __repr__(self) -> str:
        return f"Run('{self.path}', command={self.info.get('command')!r}, status={self.info.get('status')!r})"


def open_run(path: str | Path) -> Run:
    """The run directory ``path`` (made by any command)."""
    return Run(path)


def _config(cls, config: str | Path | None, settings: dict, base=None):
    from ovlabel.config.files import build, load_config_file, merge

    values = merge(load_config_file(config), settings) if config else settings
    return build(cls, values, base)


def _setup() -> None:
    import torch

    torch.set_flush_denormal(True)  # random-initialised (tiny) models can make denormals that slow CPUs ~12x


def label(images: str | Path, out: str | Path, *, config: str | Path | None = None, loaded: dict | None = None,
          **settings) -> Run:
    """``pseudo-label``: FMbSeg Stage 1 labels for every image under ``images`` (folder, list file, image).
    ``settings``: :class:`ovlabel.config.PseudoLabelConfig` fields (``vocab="cat,dog"``, ``stages="1.1"``,
    ``detect={...}``, ``models="tiny"``); ``loaded``: ready ``{"clip": ..., "sam": ...}`` model wrappers to use
    instead of loading them."""
    from ovlabel.config import PseudoLabelConfig
    from ovlabel.labelling.stage1 import label as run

    cfg = _config(PseudoLabelConfig, config, settings)
    _setup()
    return Run(out, run(images, out, cfg, models=loaded))


def classify_masks(run: str | Path, *, images: str | Path | None = None, loaded: dict | None = None,
                   **settings) -> Run:
    """``classify-masks``: add or redo Stage 1.2 of a run, or re-merge its stages; ``settings`` change the
    run's own (``classify={"classifier": "ensemble"}``, ``merge={"paint": "small-on-top"}``)."""
    from ovlabel.labelling.stage1 import classify_masks as run_classify

    _setup()
    return Run(run, run_classify(run, settings, images=images, models=loaded))


def salience(inputs: str | Path, out: str | Path, *, config: str | Path | None = None, loaded=None,
             **settings) -> Run:
    """``salience``: PnP-OVSS labels for images (with ``vocab=``) or for a run's images and detected classes.
    ``settings``: :class:`ovlabel.salience_config.SalienceRunConfig` fields; ``loaded``: a ready BLIP wrapper."""
    from ovlabel.labelling.salience import salience as run
    from ovlabel.salience_config import SalienceRunConfig

    cfg = _config(SalienceRunConfig, config, settings)
    _setup()
    return Run(out, run(inputs, out, cfg, loaded))


def refine(run: str | Path, out: str | Path, *, config: str | Path | None = None, **settings) -> Run:
    """``refine``: dense-CRF refinement of a run into a new run. ``settings``: :class:`ovlabel.config.RefineConfig`
    fields (``crf={"bi_w": 5}``, ``workers=4``)."""
    from ovlabel.config import RefineConfig
    from ovlabel.labelling.refine import refine as run_refine

    return Run(out, run_refine(run, out, _config(RefineConfig, config, settings)))


def segment(images: str | Path, out: str | Path, *, classes: str, checkpoint: str | Path,
            config: str | Path | None = None, loaded: dict | None = None, **settings) -> Run:
    """``segment``: label new images with a ``train-align`` checkpoint and any ``classes``. ``settings``:
    :class:`ovlabel.config.SegmentConfig` fields."""
    from ovlabel.config import SegmentConfig
    from ovlabel.labelling.segment import segment as run

    cfg = _config(SegmentConfig, config, {**settings, "classes": classes, "checkpoint": str(checkpoint)})
    _setup()
    return Run(out, run(images, out, cfg, loaded))


def train_align(run: str | Path, out: str | Path, *, config: str | Path | None = None, loaded: dict | None = None,
                **settings):
    """``train-align``: train FMbSeg's alignment module on a run's labels into the checkpoint folder ``out``;
    returns its :class:`ovlabel.training.align.TrainSummary`."""
    from ovlabel.config import TrainAlignConfig
    from ovlabel.training.align import train

    cfg = _config(TrainAlignConfig, config, settings)
    _setup()
    return train(run, out, cfg, loaded)
