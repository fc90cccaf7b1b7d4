"""Refinement and scoring commands: ``refine``, ``eval`` and ``protocols``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app, report_run
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.config import EvalConfig, RefineConfig


@config_command(app, "refine", RefineConfig, params=[
    param("run_dir", Annotated[Path, typer.Argument(help="A run directory (pseudo-label, refine, ...); it is only read.")]),
    param("out", Annotated[Optional[Path], typer.Option("--out", "-o", help="New run directory to write (default: RUN_DIR-crf next to it).")], None),
])
def refine(run_dir: Path, out: Path | None, given: dict):
    """Dense-CRF refinement of RUN_DIR's label maps into a new run (CutLER's CRF parameters by default)."""
    cfg = build_config(RefineConfig, given)
    from ovlabel.labelling.refine import refine as run

    dest = out or run_dir.expanduser().resolve().parent / f"{run_dir.expanduser().resolve().name}-crf"
    report_run(_guard(lambda: run(run_dir, dest, cfg)))


@config_command(app, "eval", EvalConfig, params=[
    param("pred", Annotated[Path, typer.Argument(help="A run directory, or a folder of label PNGs (matched to GT by file stem).")]),
    param("gt", Annotated[Path, typer.Argument(help="Ground truth: a folder of label PNGs, or a dataset root (VOC2012, Pascal-Context, ADE20K, COCO-Stuff 164k, Cityscapes).")]),
])
def eval_cmd(pred: Path, gt: Path, given: dict):
    """Score PRED against GT with mmsegmentation's IoUMetric: dataset-level mIoU, mAcc, aAcc, per-class IoU."""
    cfg = build_config(EvalConfig, given)
    from ovlabel.evaluate.run import evaluate

    result = _guard(lambda: evaluate(pred, gt, cfg))
    typer.echo(result.table())
    for line in result.warnings():
        typer.echo(f"warning: {line}", err=True)
    typer.echo(f"report: {result.json_path} and {result.md_path}")


@app.command("protocols")
def protocols_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A protocol to print in full; omit to list them.")] = None,
):
    """List the published evaluation protocols (inference resolution, window, background, classes)."""
    from ovlabel.protocols import PROTOCOLS, get_protocol

    if name is not None:
        p = _guard(lambda: get_protocol(name))
        for k, v in p.to_json().items():
            typer.echo(f"{k:18} {v}")
        return
    typer.echo(f"{'protocol':22} {'short':>5} {'window':>6} {'stride':>6} {'bg thr':>6}  classes            layout")
    for p in PROTOCOLS.values():
        bg = "-" if p.bg_threshold is None else f"{p.bg_threshold:g}"
        typer.echo(f"{p.name:22} {p.short_side:5d} {p.window:6d} {p.stride:6d} {bg:>6}  {p.vocab:18} {p.gt_layout}"
                   + (" (reduce_zero_label)" if p.reduce_zero_label else ""))
