"""Reproduction command: ``benchmark`` (a published table's setting end to end, ours beside the papers')."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app
from ovlabel.config import BENCHMARK_PATHS, BenchmarkConfig

_B = BenchmarkConfig()


@app.command()
def benchmark(
    dataset: Annotated[Path, typer.Argument(help="Dataset root in a layout `eval` reads (VOC2012, Pascal-Context, ADE20K, COCO-Stuff 164k, Cityscapes).")],
    protocol: Annotated[str, typer.Option(help="Evaluation protocol preset (see `ovlabel protocols`), e.g. tcl-voc21.")] = _B.protocol,
    work: Annotated[Optional[Path], typer.Option("--work", "-o", help="Work folder: every step's run, the reports and the table (default: ovlabel-runs/benchmark-<protocol>). Re-running resumes.")] = None,
    path: Annotated[str, typer.Option(help=f"Method: {' or '.join(BENCHMARK_PATHS)} (Stage 1 labels evaluated directly).")] = _B.path,
    split: Annotated[str, typer.Option(help="Evaluated split.")] = _B.split,
    train_images: Annotated[Optional[Path], typer.Option(help="fmbseg: images to pseudo-label (folder or list file); default: the dataset's train split. FMbSeg used COCO-Stuff train2017.")] = None,
    train_vocab: Annotated[Optional[str], typer.Option(help="fmbseg: vocabulary of the pseudo labels (FMbSeg: coco-stuff); default: the protocol's classes.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="fmbseg: an existing train-align checkpoint (skips pseudo-labelling and training).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N evaluated images (smoke test; not the published setting).")] = None,
    train_limit: Annotated[Optional[int], typer.Option(help="Only the first N training images.")] = None,
    models: Annotated[str, typer.Option(help="Model preset: default or tiny (random, for tests).")] = _B.models,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model (see `ovlabel models`).")] = None,
    sam: Annotated[Optional[str], typer.Option(help="SAM model.")] = None,
    dinov2: Annotated[Optional[str], typer.Option(help="DINOv2 model for train-align.")] = None,
    epochs: Annotated[int, typer.Option(help="train-align epochs (FMbSeg: 10).")] = _B.epochs,
    resolution: Annotated[Optional[int], typer.Option(help="pseudo-label: short side the image is over-sampled to (default: pseudo-label's).")] = None,
    points_per_side: Annotated[Optional[int], typer.Option(help="pseudo-label: Stage 1.2 prompt grid points per side (default: pseudo-label's).")] = None,
    train_resolution: Annotated[Optional[int], typer.Option(help="train-align: short side (default: train-align's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _B.device,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
):
    """Reproduce a published setting on DATASET end to end (FMbSeg: pseudo-label, train-align, segment, eval;
    or training-free Stage 1) and write a table with the published numbers beside ours."""
    cfg = _guard(lambda: BenchmarkConfig(
        protocol=protocol, path=path, split=split, train_images=str(train_images) if train_images else None,
        train_vocab=train_vocab, checkpoint=str(checkpoint) if checkpoint else None, limit=limit,
        train_limit=train_limit, models=models, clip=clip, sam=sam, dinov2=dinov2, epochs=epochs,
        resolution=resolution, points_per_side=points_per_side, train_resolution=train_resolution, device=device,
        progress=progress,
    ))
    _heavy_setup()
    from ovlabel.bench import run_benchmark

    dest = work or Path("ovlabel-runs") / f"benchmark-{protocol}"
    result = _guard(lambda: run_benchmark(dataset, dest, cfg))
    typer.echo(result.markdown.read_text(encoding="utf-8"))
