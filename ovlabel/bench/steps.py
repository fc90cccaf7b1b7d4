"""The one place ``ovlabel benchmark`` calls the pipeline: four steps, each a normal resumable run.

Everything else in :mod:`ovlabel.bench` goes through these functions, so when the run engine moves the
entry points (``ovlabel.pipeline.run``, ``ovlabel.stages.train.train``, ``ovlabel.stages.segment.run``,
``ovlabel.evaluate.run.evaluate``) only this module changes. ``models``: ready model objects to inject
(tests); None builds them from the config.
"""

from __future__ import annotations

from pathlib import Path


def pseudo_label(images: Path, out: Path, cfg, models: dict | None = None):
    """Stage 1 (1.1 + 1.2) of ``images`` into the run ``out``; ``cfg``: a PseudoLabelConfig. Resumes."""
    from ovlabel.pipeline import run

    return run(images, out, cfg, models=models)


def train_align(run_dir: Path, out: Path, cfg, models: dict | None = None):
    """Stage 2 training on the run ``run_dir`` into the checkpoint folder ``out``; ``cfg``: a
    TrainAlignConfig (``resume`` continues a checkpoint left in ``out``; a finished one returns at once)."""
    from ovlabel.stages.train import train

    return train(run_dir, out, cfg, models)


def segment(images: Path, out: Path, cfg, models: dict | None = None):
    """``segment`` of ``images`` with ``cfg`` (a SegmentConfig) into the run ``out``. Resumes.

    The protocol's inference half (short side, sliding window, background threshold) is not passed:
    ``segment`` has no protocol option yet; once it has, pass ``protocol=`` here (see docs/benchmark.md).
    """
    from ovlabel.stages.segment import run

    return run(images, out, cfg, models)


def evaluate(pred: Path, gt: Path, cfg):
    """``eval`` of the run ``pred`` against ``gt`` with ``cfg`` (an EvalConfig)."""
    from ovlabel.evaluate.run import evaluate as _evaluate

    return _evaluate(pred, gt, cfg)
