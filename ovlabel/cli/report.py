"""Review command: ``report`` (one self-contained HTML page per run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app
from ovlabel.config import GT_LAYOUTS, EvalConfig

_E = EvalConfig()


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A complete run directory (pseudo-label, refine, segment, ...).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write (default: RUN/report.html).")] = None,
    review: Annotated[Optional[int], typer.Option("--review", help="Show the N least certain images in the grid (default: 60).", show_default=False)] = None,
    against: Annotated[Optional[Path], typer.Option("--against", help="Another run of the same images: add the label drift against it.")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Another labeller's run of the same images (e.g. `segment` with a checkpoint trained on this run): its agreement joins the quality estimate.")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Ground truth (as `eval` reads it) to score the run now and compare the estimate with the true per-image mIoU.")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="With --gt: the evaluation protocol (see `ovlabel protocols`).")] = None,
    gt_layout: Annotated[str, typer.Option(help=f"With --gt: the ground-truth layout: {', '.join(GT_LAYOUTS)}.")] = _E.gt_layout,
    split: Annotated[str, typer.Option(help="With --gt: the split of a known layout.")] = _E.split,
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the images moved since the run.")] = None,
):
    """Write a self-contained HTML review page for RUN_DIR: provenance, per-class counts, the label-quality
    estimate, the least certain images first with their masks, drift and evaluation results."""
    from ovlabel.report import build_report

    cfg = None
    if gt is not None:
        cfg = _guard(lambda: EvalConfig(protocol=protocol, gt_layout=gt_layout, split=split, allow_missing=True,
                                        progress=False))
    result = _guard(lambda: build_report(run_dir, out=out, against=against, gt=gt, eval_cfg=cfg, review=review,
                                         images=images, reference=reference))
    for row in result.shown[:10]:
        q = row.get("quality")
        typer.echo(f"  {'n/a' if q is None else f'{q:.3f}'}  {row['file']}")
    if len(result.shown) > 10:
        typer.echo(f"  ... {len(result.shown) - 10} more in the page")
    if result.spearman is not None:
        typer.echo(f"estimate vs true per-image mIoU: Spearman {result.spearman:.3f}")
    typer.echo(f"report: {result.path}")
