"""Refinement and scoring commands: ``refine``, ``eval`` and ``protocols``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app, report_run
from ovlabel.config import GT_LAYOUTS, CRFConfig, EvalConfig, RefineConfig, default_workers

_C = CRFConfig()
_E = EvalConfig()


@app.command()
def refine(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (pseudo-label, refine, ...); it is only read.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="New run directory to write (default: RUN_DIR-crf next to it).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the images moved since the run.")] = None,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian blur of hard masks before the CRF, as a fraction of the long side (PnP-OVSS §3.3); 0 = none.")] = _C.blur_sigma,
    blur_side: Annotated[str, typer.Option(help="The image side --blur-sigma is a fraction of: long (PnP-OVSS's code) or short.")] = _C.blur_side,
    iterations: Annotated[int, typer.Option(help="Mean-field iterations.")] = _C.iterations,
    pos_w: Annotated[float, typer.Option(help="Smoothness kernel weight.")] = _C.pos_w,
    pos_xy_std: Annotated[float, typer.Option(help="Smoothness kernel spatial std (px).")] = _C.pos_xy_std,
    bi_w: Annotated[float, typer.Option(help="Appearance (bilateral) kernel weight.")] = _C.bi_w,
    bi_xy_std: Annotated[float, typer.Option(help="Appearance kernel spatial std (px).")] = _C.bi_xy_std,
    bi_rgb_std: Annotated[float, typer.Option(help="Appearance kernel colour std (0-255).")] = _C.bi_rgb_std,
    fill_unlabeled: Annotated[bool, typer.Option("--fill-unlabeled", help="Let the CRF give a class to unlabeled pixels (default: unlabeled is a label it may keep).")] = False,
    soft: Annotated[bool, typer.Option("--soft/--no-soft", help="Use the run's stored soft maps (RUN/soft/) as unaries where present.")] = True,
    workers: Annotated[int, typer.Option(help="CRF worker processes (default: the usable CPU cores, at most 8).", show_default=False)] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already refined in --out (also allows new settings).")] = False,
    overlays: Annotated[bool, typer.Option("--overlays", help="Also write coloured overlays to <out>/overlays/.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Dense-CRF refinement of RUN_DIR's label maps into a new run (CutLER's CRF parameters by default)."""
    cfg = _guard(lambda: RefineConfig(
        crf=CRFConfig(iterations=iterations, pos_w=pos_w, pos_xy_std=pos_xy_std, bi_w=bi_w, bi_xy_std=bi_xy_std,
                      bi_rgb_std=bi_rgb_std, blur_sigma=blur_sigma, blur_side=blur_side, fill_unlabeled=fill_unlabeled,
                      use_soft=soft),
        images=str(images) if images else None, workers=workers or default_workers(), overwrite=overwrite,
        overlays=overlays, progress=progress,
    ))
    from ovlabel.stages.refine import run

    dest = out or run_dir.expanduser().resolve().parent / f"{run_dir.expanduser().resolve().name}-crf"
    summary = _guard(lambda: run(run_dir, dest, cfg))
    report_run(summary, done=summary.refined)


@app.command("eval")
def eval_cmd(
    pred: Annotated[Path, typer.Argument(help="A run directory, or a folder of label PNGs (matched to GT by file stem).")],
    gt: Annotated[Path, typer.Argument(help="Ground truth: a folder of label PNGs, or a dataset root (VOC2012, Pascal-Context, ADE20K, COCO-Stuff 164k, Cityscapes).")],
    protocol: Annotated[Optional[str], typer.Option(help="Published setting supplying classes, layout and background handling, e.g. sclip-voc21 (see `ovlabel protocols`).")] = None,
    gt_layout: Annotated[str, typer.Option(help=f"Ground-truth layout: {', '.join(GT_LAYOUTS)}.")] = _E.gt_layout,
    split: Annotated[str, typer.Option(help="Split of a known layout.")] = _E.split,
    gt_classes: Annotated[Optional[str], typer.Option(help="GT class list (vocabulary preset, file with synonyms, or comma list); default: from the protocol/layout, else the run's vocabulary.")] = None,
    pred_classes: Annotated[Optional[str], typer.Option(help="Class list of a PNG-folder PRED (a run names its own); default: the GT's.")] = None,
    reduce_zero_label: Annotated[Optional[bool], typer.Option("--reduce-zero-label/--no-reduce-zero-label", help="GT 0 is ignored and other values shift down by one (default: by protocol/layout).", show_default=False)] = None,
    unlabeled_as: Annotated[Optional[str], typer.Option(help="GT class that unlabeled (255) predictions count as, e.g. background (default: by protocol; else they count as wrong).")] = None,
    resize_pred: Annotated[str, typer.Option(help="'none': a size mismatch is an error; 'nearest': resize predictions to the GT size.")] = _E.resize_pred,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Score even if some GT images have no prediction (they are listed in the report).")] = False,
    report: Annotated[Optional[Path], typer.Option(help="JSON report path; the Markdown report goes next to it (default: RUN/eval/<name>.json).")] = None,
    workers: Annotated[int, typer.Option(help="Threads reading PNGs.")] = _E.workers,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Score PRED against GT with mmsegmentation's IoUMetric: dataset-level mIoU, mAcc, aAcc, per-class IoU."""
    cfg = _guard(lambda: EvalConfig(
        protocol=protocol, gt_layout=gt_layout, split=split, gt_classes=gt_classes, pred_classes=pred_classes,
        reduce_zero_label=reduce_zero_label, unlabeled_as=unlabeled_as, resize_pred=resize_pred,
        allow_missing=allow_missing, report=str(report) if report else None, workers=workers, progress=progress,
    ))
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
