"""The ``export`` command: a run's labels as YOLO-seg, VOC, MMSegmentation, Hugging Face, FiftyOne or
Label Studio datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app
from ovlabel.config.export import FORMATS, IMAGE_MODES, ExportConfig

_D = ExportConfig()


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A complete run directory (made by pseudo-label, refine, segment ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; each format writes OUT/<format>/.")],
    format: Annotated[list[str], typer.Option(
        "--format", "-f", help=f"Format(s): {', '.join(FORMATS)}. Repeat the option or give a comma list.")],
    split: Annotated[float, typer.Option(help="Fraction of images in train (the rest: val), by content hash.")] = _D.split,
    seed: Annotated[int, typer.Option(help="Seed of the train/val split.")] = _D.seed,
    images: Annotated[str, typer.Option(help=f"Image files: {' | '.join(IMAGE_MODES)} (none: labels only).")] = _D.images,
    image_root: Annotated[Optional[Path], typer.Option(
        help="Where the run's images are now, if they moved (default: the run's input folder).")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Drop masks scored below this (0-1).")] = None,
    classes: Annotated[Optional[str], typer.Option(
        help="Export only these run classes, in this order (comma list); others become unlabeled.")] = None,
    rename: Annotated[Optional[str], typer.Option(
        help="Rename classes: 'old=new,...'; two classes renamed alike merge.")] = None,
    url_prefix: Annotated[str, typer.Option(help="Label Studio image URL prefix.")] = _D.url_prefix,
    hf_shard_images: Annotated[int, typer.Option(help="Images per Parquet shard of the hf export.")] = _D.hf_shard_images,
    overwrite: Annotated[bool, typer.Option(help="Replace an export made with other settings or from another run state.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = False,
):
    """Export a run's labels (reads its artifacts only; no model). Resumable and deterministic."""
    from ovlabel.config.export import parse_classes, parse_rename
    from ovlabel.export import export_run

    def go():
        cfg = ExportConfig(split=split, seed=seed, images=images, image_root=image_root, min_score=min_score,
                           classes=parse_classes(classes), rename=parse_rename(rename), url_prefix=url_prefix,
                           hf_shard_images=hf_shard_images, overwrite=overwrite)
        return export_run(run, out, format, cfg, progress=progress)

    typer.echo(_guard(go).describe())
