"""PnP-OVSS commands: ``salience`` (BLIP GradCAM + Salience DropOut + blur + CRF labels) and ``tune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.errors import OvlabelError
from ovlabel.salience_config import SalienceConfig, SalienceRunConfig, TuneConfig, parse_head

_S, _R, _T = SalienceConfig(), SalienceRunConfig(), TuneConfig()

Inputs = Annotated[Path, typer.Argument(help="A run directory (its images, vocabulary and per-image Stage 1.1 classes), or images: a folder, a list file or one image (with --vocab or --classes).")]
Vocab = Annotated[Optional[str], typer.Option(help="Classes for every image: preset, file or comma list (default with a run: the classes its Stage 1.1 detected per image).")]
Classes = Annotated[Optional[str], typer.Option(help="Same as --vocab with a comma list, e.g. 'rocket,bridge'.")]
Models = Annotated[str, typer.Option(help="Model preset: 'default' (blip:itm-large-flickr) or 'tiny' (random, for tests/offline demos).")]
Blip = Annotated[Optional[str], typer.Option(help="BLIP model: blip:itm-large-flickr|itm-large-coco|itm-base-coco|itm-base-flickr[/FOLDER] (see `ovlabel models`).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")]
Images = Annotated[Optional[Path], typer.Option(help="Image root of an input run, if the images moved.")]
Resolution = Annotated[int, typer.Option(help="BLIP's square input side (px, multiple of 16; PnP-OVSS Tab. 3: 336).")]
Rounds = Annotated[int, typer.Option(help="Salience DropOut passes summed, the first on the whole image (PnP-OVSS Tab. 5 and its code: 4, the image + 3 drops).")]
ItmToken = Annotated[str, typer.Option(help="Token at position 0 of BLIP's ITM prompt: enc (original BLIP, PnP-OVSS's code) or cls (Hugging Face).")]
DropPatches = Annotated[int, typer.Option(help="Patches dropped after each iteration (§3.2: 10).")]


def _vocab(vocab: str | None, classes: str | None) -> str | None:
    if vocab and classes:
        raise OvlabelError("give --vocab or --classes, not both")
    if classes and "," not in classes:
        classes += ","  # one class: load_vocabulary needs a trailing comma to tell it from a preset name
    return classes or vocab


@app.command()
def salience(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    vocab: Vocab = None,
    classes: Classes = None,
    params: Annotated[Optional[Path], typer.Option(help="Parameter file written by `ovlabel tune` (explicit options win).")] = None,
    layer: Annotated[Optional[int], typer.Option(help=f"Cross-attention layer, 1-based [default: {_S.layer}, PnP-OVSS Tab. 2].", show_default=False)] = None,
    head: Annotated[Optional[str], typer.Option(help=f"Attention head, 1-based, or 'mean' [default: {_S.head}, Tab. 2].", show_default=False)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=f"Threshold on min-max-normalised salience [default: {_S.threshold}, Tab. 2].", show_default=False)] = None,
    blur_sigma: Annotated[Optional[float], typer.Option(help=f"Gaussian blur std of the unaries, fraction of the long side [default: {_S.crf.blur_sigma}, Tab. 2].", show_default=False)] = None,
    resolution: Resolution = _S.resolution,
    rounds: Rounds = _S.rounds,
    drop_patches: DropPatches = _S.drop_patches,
    crf: Annotated[bool, typer.Option("--crf/--no-crf", help="Dense CRF after the blur (CutLER's parameters; see `ovlabel refine --help` to change them later).")] = True,
    unary: Annotated[str, typer.Option(help="CRF unaries: softmax (PnP-OVSS's code: blurred, normalised salience) or indicator (blurred hard masks).")] = _S.unary,
    itm_token: ItmToken = _S.itm_token,
    keep_soft: Annotated[bool, typer.Option("--keep-soft", help="Also keep the blurred class probabilities in <out>/soft/ (compressed) for `ovlabel refine`.")] = False,
    models: Models = _R.models,
    blip: Blip = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    images: Images = None,
    batch_size: Annotated[int, typer.Option(help="Images per BLIP forward/backward pass.")] = _R.batch_size,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already labelled in --out (also allows new settings).")] = False,
    overlays: Annotated[bool, typer.Option("--overlays", help="Also write coloured overlays to <out>/overlays/.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
):
    """Label images with PnP-OVSS: BLIP cross-attention sharpened by GradCAM, Salience DropOut, threshold,
    Gaussian blur and dense CRF. Writes the same run artifacts as pseudo-label."""
    def build():
        from ovlabel.config import CRFConfig
        from ovlabel.stages.tune import load_params

        p = load_params(params) if params else {}
        given = {k: v for k, v in (("layer", layer), ("threshold", threshold), ("blur_sigma", blur_sigma)) if v is not None}
        if head is not None:
            given["head"] = parse_head(head)
        p.update(given)
        sal = SalienceConfig(
            layer=p.get("layer", _S.layer), head=p.get("head", _S.head), threshold=p.get("threshold", _S.threshold),
            resolution=resolution, rounds=rounds, drop_patches=drop_patches, use_crf=crf,
            crf=CRFConfig(blur_sigma=p.get("blur_sigma", _S.crf.blur_sigma)), unary=unary, itm_token=itm_token,
        )
        return SalienceRunConfig(
            vocab=_vocab(vocab, classes), models=models, blip=blip, device=device, precision=precision, salience=sal,
            images=str(images) if images else None, batch_size=batch_size, keep_soft=keep_soft,
            overwrite=overwrite, overlays=overlays, progress=progress,
        )

    cfg = _guard(build)
    _heavy_setup()
    from ovlabel.salience_run import run

    summary = _guard(lambda: run(inputs, out, cfg))
    report_run(summary)


@app.command()
def tune(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parameter file (JSON) to write; `salience --params` reads it.")],
    vocab: Vocab = None,
    classes: Classes = None,
    trials: Annotated[int, typer.Option(help="(layer, head, threshold) combinations tried (random, without replacement).")] = _T.trials,
    sigma_trials: Annotated[int, typer.Option(help="Blur stds tried afterwards, of 0.01..0.11 (0 = keep the default).")] = _T.sigma_trials,
    max_images: Annotated[int, typer.Option(help="Images scored (a seeded sample when there are more).")] = _T.max_images,
    seed: Annotated[int, typer.Option(help="Seed of the search and of the image sample.")] = _T.seed,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model of the reward (default: clip:ViT-L-14-336/openai as PnP-OVSS §4.1; with --models tiny, clip:tiny).")] = None,
    reward_norm: Annotated[str, typer.Option(help="Normalise the reward's CLIP probability over the image's own classes (image, PnP-OVSS's code) or the vocabulary.")] = _T.reward_norm,
    itm_token: ItmToken = _T.itm_token,
    templates: Annotated[str, typer.Option(help="Prompt templates of the reward's CLIP text features.")] = _T.templates,
    resolution: Resolution = _T.resolution,
    rounds: Rounds = _T.rounds,
    drop_patches: DropPatches = _T.drop_patches,
    models: Models = _T.models,
    blip: Blip = None,
    device: Device = _T.device,
    precision: Precision = _T.precision,
    images: Images = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
):
    """Tune PnP-OVSS's layer, head, threshold and blur without labels: random search with the CLIP reward of
    PnP-OVSS §3.4 (a masked image must look more like its class to CLIP than a black image does)."""
    cfg = _guard(lambda: TuneConfig(
        vocab=_vocab(vocab, classes), models=models, blip=blip, clip=clip, templates=templates, device=device,
        precision=precision, resolution=resolution, rounds=rounds, drop_patches=drop_patches, itm_token=itm_token,
        reward_norm=reward_norm, images=str(images) if images else None, trials=trials, sigma_trials=sigma_trials, max_images=max_images,
        seed=seed, progress=progress,
    ))
    _heavy_setup()
    from ovlabel.stages.tune import tune as run_tune

    doc = _guard(lambda: run_tune(inputs, out, cfg))
    p = doc["params"]
    typer.echo(f"best of {len(doc['trials'])} trials: " + ", ".join(f"{k}={v}" for k, v in p.items())
               + f" (reward {doc['reward']:g} of {doc['max_reward']} classes on {len(doc['images'])} images) -> {out}")
