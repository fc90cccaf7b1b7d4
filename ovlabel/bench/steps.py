"""The one place ``ovlabel benchmark`` calls the pipeline: four steps, each a normal resumable run.

Everything else in :mod:`ovlabel.bench` goes through these functions, the labelling commands' own entry
points (:func:`ovlabel.labelling.stage1.label`, :func:`ovlabel.training.align.train`,
:func:`ovlabel.labelling.segment.segment`, :func:`ovlabel.evaluate.run.evaluate`). ``models``: ready
model objects to inject (tests); None builds them from the config.
"""

from __future__ import annotations

from pathlib import Path


def pseudo_label(images: Path, out: Path, cfg, models: dict | None = None):
    """Stage 1 (1.1 + 1.2) of ``images`` into the run ``out``; ``cfg``: a PseudoLabelConfig. Resumes."""
    from ovlabel.labelling.stage1 import label

    return label(images, out, cfg, models=models)


def train_align(run_dir: Path, out: Path, cfg, models: dict | None = None):
    """Stage 2 training on the run ``run_dir`` into the checkpoint folder ``out``; ``cfg``: a
    TrainAlignConfig (``resume`` continues a checkpoint left in ``out``; a finished one returns at once)."""
    from ovlabel.training.align import train

    return train(run_dir, out, cfg, models)


def segment(images: Path, out: Path, cfg, models: dict | None = None):
    """``segment`` of ``images`` with ``cfg`` (a SegmentConfig, its ``protocol`` the benchmark's: short side,
    sliding window, background handling) into the run ``out``. Resumes."""
    from ovlabel.labelling.segment import segment as run

    return run(images, out, cfg, models)


def evaluate(pred: Path, gt: Path, cfg):
    """``eval`` of the run ``pred`` against ``gt`` with ``cfg`` (an EvalConfig)."""
    from ovlabel.evaluate.run import evaluate as _evaluate

    return _evaluate(pred, gt, cfg)
