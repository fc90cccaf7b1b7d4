"""Stage 2 commands: ``train-align`` (train the alignment module on a pseudo-label run) and ``segment``
(label new images with a trained checkpoint and any class names)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.cli.label import Images, default_out
from ovlabel.config import SegmentConfig, TrainAlignConfig


@config_command(app, "train-align", TrainAlignConfig, params=[
    param("run", Annotated[Path, typer.Option("--run", help="A pseudo-label run directory (its masks are the training labels).")]),
    param("out", Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (align.safetensors, config.json, ...).")]),
])
def train_align(run: Path, out: Path, given: dict):
    """Train FMbSeg's alignment module (Stage 2) on frozen DINOv2 features with a run's pseudo labels."""
    cfg = build_config(TrainAlignConfig, given)
    _heavy_setup()
    from ovlabel.training.align import train

    typer.echo(_guard(lambda: train(run, out, cfg)).describe())


@config_command(app, "segment", SegmentConfig, params=[
    param("images", Images),
    param("out", Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write (default: ovlabel-runs/<input name>-segment).")], None),
])
def segment(images: Path, out: Path | None, given: dict):
    """Segment IMAGES into any CLASSES with a trained alignment checkpoint (writes a run directory)."""
    cfg = build_config(SegmentConfig, given)
    if not cfg.classes:
        _guard(lambda: _missing("--classes is required: a comma list 'rocket,bridge', a class file, or a preset"))
    if cfg.checkpoint is None:
        from ovlabel.stages.align import missing_checkpoint_message

        _guard(lambda: _missing(missing_checkpoint_message(None)))
    _heavy_setup()
    from ovlabel.labelling.segment import segment as run

    report_run(_guard(lambda: run(images, out or default_out(images, "-segment"), cfg)))


def _missing(message: str):
    from ovlabel.errors import OvlabelError

    raise OvlabelError(message)
