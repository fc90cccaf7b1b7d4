"""Reproduction command: ``benchmark`` (a published table's setting end to end, ours beside the papers')."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.config import BenchmarkConfig


@config_command(app, "benchmark", BenchmarkConfig, params=[
    param("dataset", Annotated[Path, typer.Argument(help="Dataset root in a layout `eval` reads (VOC2012, Pascal-Context, ADE20K, COCO-Stuff 164k, Cityscapes).")]),
    param("work", Annotated[Optional[Path], typer.Option("--work", "-o", help="Work folder: every step's run, the reports and the table (default: ovlabel-runs/benchmark-<protocol>). Re-running resumes.")], None),
])
def benchmark(dataset: Path, work: Path | None, given: dict):
    """Reproduce a published setting on DATASET end to end (FMbSeg: pseudo-label, train-align, segment, eval;
    or training-free Stage 1) and write a table with the published numbers beside ours."""
    cfg = build_config(BenchmarkConfig, given)
    _heavy_setup()
    from ovlabel.bench import run_benchmark

    dest = work or Path("ovlabel-runs") / f"benchmark-{cfg.protocol}"
    result = _guard(lambda: run_benchmark(dataset, dest, cfg))
    typer.echo(result.markdown.read_text(encoding="utf-8"))
