"""Stage 2 commands: ``train-align`` (train the alignment module on a pseudo-label run) and ``segment``
(label new images with a trained checkpoint and any class names)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.config import SegmentConfig, TrainAlignConfig

_T = TrainAlignConfig()
_S = SegmentConfig()


@app.command("train-align")
def train_align(
    run: Annotated[Path, typer.Option("--run", help="A pseudo-label run directory (its masks are the training labels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (align.safetensors, config.json, ...).")],
    models: Annotated[str, typer.Option(help="Model preset for the vision encoder: 'default' (dinov2:dinov2_vitl14) or 'tiny'.")] = _T.models,
    dinov2: Annotated[Optional[str], typer.Option(help="Vision encoder, e.g. dinov2:dinov2_vitb14, dinov2:dinov2_vitl14_reg, dinov2:dinov2_vitl14/PATH.")] = None,
    clip: Annotated[Optional[str], typer.Option(help="Text encoder (default: the CLIP the run was labelled with).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the run's images moved since it was labelled.")] = None,
    resolution: Annotated[int, typer.Option(help="Short side (px) images are resized to before the encoder (rounded to 14-px patches).")] = _T.resolution,
    max_aspect: Annotated[float, typer.Option(help="Cap the long side at resolution x this.")] = _T.max_aspect,
    epochs: Annotated[int, typer.Option(help="Training epochs (FMbSeg: 10).")] = _T.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step (FMbSeg: 5).")] = _T.batch_size,
    lr: Annotated[float, typer.Option(help="SGD learning rate (cosine-annealed to 0 over all steps).")] = _T.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = _T.momentum,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = _T.weight_decay,
    temperature: Annotated[float, typer.Option(help="Contrastive loss temperature.")] = _T.temperature,
    stage12_fraction: Annotated[float, typer.Option(help="Fraction of Stage 1.2 masks kept (random, seeded; FMbSeg 4.1).")] = _T.stage12_fraction,
    min_labelled: Annotated[float, typer.Option(help="A patch is trained on if labelled pixels cover at least this share of it.")] = _T.min_labelled,
    head: Annotated[str, typer.Option(help="Stage 2 head: fmbseg (FMbSeg's alignment module) or fusioner (Fusioner's early fusion of patch and class tokens).")] = _T.head,
    vision_encoder: Annotated[str, typer.Option(help="Frozen vision encoder: dinov2 (--dinov2) or clip (the image tower of --clip).")] = _T.vision_encoder,
    text_encoder: Annotated[Optional[str], typer.Option(help="Frozen text encoder: clip (default), or a language-only transformers model: bert-base-uncased, bert:tiny, a save_pretrained folder.")] = None,
    fusion_width: Annotated[int, typer.Option(help="Fusioner head: transformer width.")] = _T.fusion_width,
    fusion_layers: Annotated[int, typer.Option(help="Fusioner head: transformer blocks.")] = _T.fusion_layers,
    fusion_heads: Annotated[int, typer.Option(help="Fusioner head: attention heads.")] = _T.fusion_heads,
    fusion_lr: Annotated[float, typer.Option(help="Fusioner head: AdamW learning rate (cosine-annealed).")] = _T.fusion_lr,
    fusion_weight_decay: Annotated[float, typer.Option(help="Fusioner head: AdamW weight decay.")] = _T.fusion_weight_decay,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, image order and Stage 1.2 subsampling.")] = _T.seed,
    feature_cache: Annotated[Optional[str], typer.Option(help="Folder for cached fp16 encoder features ('none' to disable; default: the ovlabel cache).")] = None,
    encoder_batch: Annotated[int, typer.Option(help="Images per encoder forward when computing features.")] = _T.encoder_batch,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _T.device,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")] = _T.precision,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the checkpoint in --out from its last finished epoch.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Train a Stage 2 head (FMbSeg's alignment module, or Fusioner's fusion module) on frozen vision and
    text features with a run's pseudo labels."""
    cfg = _guard(lambda: TrainAlignConfig(
        models=models, dinov2=dinov2, clip=clip, images=str(images) if images else None, resolution=resolution,
        max_aspect=max_aspect, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
        weight_decay=weight_decay, temperature=temperature, stage12_fraction=stage12_fraction,
        min_labelled=min_labelled, head=head, vision_encoder=vision_encoder, text_encoder=text_encoder,
        fusion_width=fusion_width, fusion_layers=fusion_layers, fusion_heads=fusion_heads, fusion_lr=fusion_lr,
        fusion_weight_decay=fusion_weight_decay, seed=seed, feature_cache=feature_cache, encoder_batch=encoder_batch,
        device=device, precision=precision, resume=resume, progress=progress,
    ))
    _heavy_setup()
    from ovlabel.stages.train import train

    summary = _guard(lambda: train(run, out, cfg))
    typer.echo(summary.describe())


@app.command()
def segment(
    images: Annotated[Path, typer.Argument(help="Folder of images (recursive), a text file listing image paths, or one image.")],
    classes: Annotated[str, typer.Option(help="Classes: a comma list 'rocket,bridge', a class file, or a preset (voc, ade20k, ...).")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint folder written by train-align.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write (default: ovlabel-runs/<input name>-segment).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates (default: the checkpoint's).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Short side (px) for the encoder (default: the checkpoint's).")] = None,
    refine: Annotated[bool, typer.Option("--refine", help="Refine the upsampled class probabilities with a dense CRF.")] = False,
    dinov2: Annotated[Optional[str], typer.Option(help="Vision encoder (default: the checkpoint's; override only to relocate its weights).")] = None,
    clip: Annotated[Optional[str], typer.Option(help="Text encoder (default: the checkpoint's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _S.device,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")] = _S.precision,
    image_batch: Annotated[int, typer.Option(help="Images read ahead and processed per batch.")] = _S.image_batch,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already segmented in --out (also allows new settings).")] = False,
    overlays: Annotated[bool, typer.Option("--overlays", help="Also write coloured overlays with a legend to <out>/overlays/.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Segment IMAGES into any CLASSES with a trained alignment checkpoint (writes a run directory)."""
    cfg = _guard(lambda: SegmentConfig(
        classes=classes, checkpoint=str(checkpoint) if checkpoint else None, templates=templates, resolution=resolution,
        dinov2=dinov2, clip=clip, refine=refine, device=device, precision=precision, image_batch=image_batch,
        overwrite=overwrite, overlays=overlays, progress=progress,
    ))
    if checkpoint is None:
        from ovlabel.stages.align import missing_checkpoint_message

        typer.echo(f"error: {missing_checkpoint_message(None)}", err=True)
        raise typer.Exit(2)
    _heavy_setup()
    from ovlabel.stages.segment import run as segment_run

    dest = out or Path("ovlabel-runs") / f"{Path(images.expanduser().resolve().name or 'images').stem}-segment"
    summary = _guard(lambda: segment_run(images, dest, cfg))
    report_run(summary)
