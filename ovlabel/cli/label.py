"""Labelling commands: ``pseudo-label`` and ``show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app
from ovlabel.config import DetectConfig, PseudoLabelConfig

_D = DetectConfig()
_P = PseudoLabelConfig()


def _default_out(images: Path) -> Path:
    name = images.expanduser().resolve().name or "images"
    return Path("ovlabel-runs") / Path(name).stem


@app.command("pseudo-label")
def pseudo_label(
    images: Annotated[Path, typer.Argument(help="Folder of images (recursive), a text file listing image paths, or one image.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write (default: ovlabel-runs/<input name>).")] = None,
    vocab: Annotated[str, typer.Option(help="Preset (coco-stuff, coco-object, voc, voc-bg, pascal-context, pascal-context-60, ade20k, cityscapes), a class file, or a comma list 'rocket,bridge'.")] = _P.vocab,
    templates: Annotated[str, typer.Option(help="Prompt templates: fmbseg ('a photo of a {}.'), vild (14), imagenet (80), or a file.")] = _P.templates,
    models: Annotated[str, typer.Option(help="Model preset: 'default' (clip:ViT-L-14/openai + sam:vit_h) or 'tiny' (random, for tests/offline demos).")] = _P.models,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model, e.g. clip:ViT-B-16/openai or clip:ViT-L-14/PATH (see `ovlabel models`).")] = None,
    sam: Annotated[Optional[str], typer.Option(help="SAM model: sam:vit_h|vit_l|vit_b[/PATH or URL].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _P.device,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")] = _P.precision,
    resolution: Annotated[int, typer.Option(help="Short side (px) the image is over-sampled to before cropping.")] = _D.resolution,
    crop_size: Annotated[Optional[int], typer.Option(help="Sliding-window crop (px); default: CLIP's input size.")] = None,
    overlap: Annotated[float, typer.Option(help="Fraction of a crop shared with its neighbour.")] = _D.overlap,
    max_aspect: Annotated[float, typer.Option(help="Cap the over-sampled long side at resolution x this.")] = _D.max_aspect,
    min_crops: Annotated[int, typer.Option(help="A class is present if it is the best match of at least this many crops.")] = _D.min_crops,
    points: Annotated[int, typer.Option(help="SAM point prompts per present class (the most similar patches).")] = _D.points_per_class,
    multimask: Annotated[bool, typer.Option("--multimask/--single-mask", help="Let SAM propose 3 masks per class and keep the most confident.")] = _D.multimask,
    clip_batch_size: Annotated[int, typer.Option(help="CLIP crops per forward pass.")] = _D.clip_batch_size,
    sam_batch_size: Annotated[int, typer.Option(help="Images per SAM image-encoder pass.")] = _D.sam_batch_size,
    image_batch: Annotated[int, typer.Option(help="Images in flight at once (their CLIP crops share batches).")] = _P.image_batch,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already labelled in --out (also allows new settings).")] = False,
    overlays: Annotated[bool, typer.Option("--overlays", help="Also write coloured overlays with a legend to <out>/overlays/.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Label IMAGES with Stage 1.1 of FMbSeg: CLIP crop detection, then SAM queried with CLIP points."""
    cfg = _guard(lambda: PseudoLabelConfig(
        vocab=vocab, templates=templates, models=models, clip=clip, sam=sam, device=device, precision=precision,
        detect=DetectConfig(
            resolution=resolution, crop_size=crop_size, overlap=overlap, max_aspect=max_aspect,
            min_crops=min_crops, points_per_class=points, multimask=multimask,
            clip_batch_size=clip_batch_size, sam_batch_size=sam_batch_size,
        ),
        image_batch=image_batch, overwrite=overwrite, overlays=overlays, progress=progress,
    ))
    _heavy_setup()
    from ovlabel.pipeline import run

    summary = _guard(lambda: run(images, out or _default_out(images), cfg))
    typer.echo(summary.describe())
    for rel, reason in summary.failures[:10]:
        typer.echo(f"  failed: {rel}: {reason}", err=True)
    if len(summary.failures) > 10:
        typer.echo(f"  ... and {len(summary.failures) - 10} more (see manifest.parquet)", err=True)
    if summary.total and summary.labelled == 0:
        raise typer.Exit(1)


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by pseudo-label.")],
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the images moved since the run.")] = None,
):
    """Write coloured overlays with a legend for every labelled image of a run (RUN/overlays/)."""
    from ovlabel.show import show_run

    n, dest = _guard(lambda: show_run(run_dir, images))
    typer.echo(f"{n} overlays -> {dest}")
