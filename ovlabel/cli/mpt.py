"""``train-mpt``: OVSeg's mask prompt tuning (seed 002 §3.3) on a pseudo-label run's masked crops."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app
from ovlabel.config.mpt import MptConfig

_M = MptConfig()


@app.command("train-mpt")
def train_mpt(
    run: Annotated[Path, typer.Argument(help="A pseudo-label run directory (its most confident masks are the training crops).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (mpt.safetensors, config.json, train.json).")],
    clip: Annotated[Optional[str], typer.Option(help="CLIP model (default: the CLIP the run was labelled with).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the run's images moved since it was labelled.")] = None,
    templates: Annotated[str, typer.Option(help="Prompt templates of the class text features (OVSeg A.2: vild).")] = _M.templates,
    depth: Annotated[int, typer.Option(help="Layers that get mask prompts (deep prompts; OVSeg: 3).")] = _M.depth,
    lr: Annotated[float, typer.Option(help="AdamW learning rate, cosine-annealed (OVSeg: 2e-2).")] = _M.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (OVSeg: 0).")] = _M.weight_decay,
    batch_size: Annotated[int, typer.Option(help="Crops per step (OVSeg: 256).")] = _M.batch_size,
    epochs: Annotated[int, typer.Option(help="Epochs (OVSeg: 5).")] = _M.epochs,
    fraction: Annotated[float, typer.Option(help="Share of each class's masks used, most confident first.")] = _M.fraction,
    max_crops: Annotated[int, typer.Option(help="At most this many crops in all (kept in memory), most confident first.")] = _M.max_crops,
    seed: Annotated[int, typer.Option(help="Seed of the prompt initialisation and the crop order.")] = _M.seed,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _M.device,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")] = _M.precision,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Learn OVSeg's mask prompts (tokens that replace the blank patches of masked crops, CLIP frozen) on a
    run's most confident masked crops; use them with `pseudo-label/classify-masks --classifier ovseg --mpt CKPT`."""
    cfg = _guard(lambda: MptConfig(
        clip=clip, images=str(images) if images else None, templates=templates, depth=depth, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, fraction=fraction, max_crops=max_crops,
        seed=seed, device=device, precision=precision, progress=progress,
    ))
    _heavy_setup()
    from ovlabel.stages.mpt import train

    typer.echo(_guard(lambda: train(run, out, cfg)).describe())
