"""``train-mpt``: OVSeg's mask prompt tuning (seed 002 §3.3) on a pseudo-label run's masked crops."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.config.mpt import MptConfig


@config_command(app, "train-mpt", MptConfig, params=[
    param("run", Annotated[Path, typer.Argument(help="A pseudo-label run directory (its most confident masks are the training crops).")]),
    param("out", Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (mpt.safetensors, config.json, train.json).")]),
])
def train_mpt(run: Path, out: Path, given: dict):
    """Learn OVSeg's mask prompts (tokens that replace the blank patches of masked crops, CLIP frozen) on a
    run's most confident masked crops; use them with `pseudo-label/classify-masks --classifier ovseg --mpt CKPT`."""
    cfg = build_config(MptConfig, given)
    _heavy_setup()
    from ovlabel.training.mpt import train

    typer.echo(_guard(lambda: train(run, out, cfg)).describe())
