"""Labelling commands: ``pseudo-label``, ``classify-masks`` and ``show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.config import (
    CLASSIFIERS,
    PAINT_POLICIES,
    AutoMaskConfig,
    ClassifyConfig,
    DetectConfig,
    MergeConfig,
    PseudoLabelConfig,
)

_D = DetectConfig()
_P = PseudoLabelConfig()
_S, _C, _M = AutoMaskConfig(), ClassifyConfig(), MergeConfig()


def _opt(name: str, help: str, default) -> typer.Option:
    return typer.Option(name, help=f"{help} [default: {default}]", show_default=False)


# Stage 1.2 options, shared by pseudo-label and classify-masks. None = not given: pseudo-label uses the
# default shown, classify-masks keeps the run's own value (or the default if the run has no Stage 1.2).
PointsPerSide = Annotated[Optional[int], _opt("--points-per-side", "Stage 1.2: SAM prompt grid points per side.", _S.points_per_side)]
PointsPerBatch = Annotated[Optional[int], _opt("--points-per-batch", "Stage 1.2: prompts per SAM decoder call (speed/memory only).", _S.points_per_batch)]
PredIou = Annotated[Optional[float], _opt("--pred-iou-thresh", "Stage 1.2: keep masks with SAM's predicted IoU at least this.", _S.pred_iou_thresh)]
Stability = Annotated[Optional[float], _opt("--stability-thresh", "Stage 1.2: keep masks with a stability score at least this.", _S.stability_score_thresh)]
StabilityOffset = Annotated[Optional[float], _opt("--stability-offset", "Stage 1.2: logit offset of the stability score.", _S.stability_score_offset)]
BoxNms = Annotated[Optional[float], _opt("--box-nms-thresh", "Stage 1.2: box IoU above which masks are duplicates.", _S.box_nms_thresh)]
MinArea = Annotated[Optional[float], _opt("--min-area", "Stage 1.2: smallest mask kept, as a fraction of the image.", _S.min_area)]
MaxArea = Annotated[Optional[float], _opt("--max-area", "Stage 1.2: largest mask kept, as a fraction of the image.", _S.max_area)]
MinRegion = Annotated[Optional[int], _opt("--min-region-area", "Stage 1.2: fill holes and drop islands below this many pixels (0 = off).", _S.min_region_area)]
Classifier = Annotated[Optional[str], _opt("--classifier", f"Stage 1.2 mask classifier: {', '.join(CLASSIFIERS)}.", _C.classifier)]
EnsembleLambda = Annotated[Optional[float], _opt("--ensemble-lambda", "Weight of the masked-crop classifier in the ensemble p^(1-l)*p_crop^l.", _C.ensemble_lambda)]
CropTemplates = Annotated[Optional[str], _opt("--crop-templates", "Templates of the masked-crop classifier (fmbseg, vild, imagenet or a file).", _C.templates)]
TopK = Annotated[Optional[int], _opt("--top-k", "Class scores kept per Stage 1.2 mask.", _C.top_k)]
Ratio = Annotated[Optional[float], _opt("--stage12-ratio", "Fraction of each image's Stage 1.2 masks kept (seeded sample).", _M.stage12_ratio)]
Seed = Annotated[Optional[int], _opt("--seed", "Seed of the Stage 1.2 sample.", _M.seed)]
SkipCovered = Annotated[Optional[bool], typer.Option(
    "--skip-covered/--full-grid",
    help="Stage 1.2: prompt a 4x sparser grid first, then only grid points not inside confident masks found "
         "so far (TinySAM's hierarchical strategy; fewer decoder calls, may miss masks). [default: --full-grid]",
    show_default=False,
)]
Paint = Annotated[Optional[str], _opt("--paint", f"Which mask wins overlapping pixels in label maps: {', '.join(PAINT_POLICIES)}.", _M.paint)]


def _given(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def _stage12(points_per_side, points_per_batch, pred_iou_thresh, stability_thresh, stability_offset,
             box_nms_thresh, min_area, max_area, min_region_area, classifier, ensemble_lambda, crop_templates,
             top_k, stage12_ratio, seed, paint, skip_covered=None) -> dict[str, dict]:
    """The Stage 1.2 options given on the command line, as field overrides per config."""
    return {
        "automask": _given(
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh, stability_score_offset=stability_offset,
            box_nms_thresh=box_nms_thresh, min_area=min_area, max_area=max_area, min_region_area=min_region_area,
            skip_covered=skip_covered,
        ),
        "classify": _given(classifier=classifier, ensemble_lambda=ensemble_lambda, templates=crop_templates, top_k=top_k),
        "merge": _given(stage12_ratio=stage12_ratio, seed=seed, paint=paint),
    }


def _default_out(images: Path) -> Path:
    name = images.expanduser().resolve().name or "images"
    return Path("ovlabel-runs") / Path(name).stem


@app.command("pseudo-label")
def pseudo_label(
    images: Annotated[Path, typer.Argument(help="Folder of images (recursive), a text file listing image paths, or one image.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write (default: ovlabel-runs/<input name>).")] = None,
    vocab: Annotated[str, typer.Option(help="Preset (coco-stuff, coco-object, voc, voc-bg, pascal-context, pascal-context-60, ade20k, cityscapes), a class file, or a comma list 'rocket,bridge'.")] = _P.vocab,
    stages: Annotated[str, typer.Option(help="FMbSeg stages to run: 1.1 (CLIP crops query SAM), 1.2 (SAM automatic masks classified by CLIP), or both.")] = ",".join(_P.stages),
    templates: Annotated[str, typer.Option(help="Prompt templates: fmbseg ('a photo of a {}.'), vild (14), imagenet (80), or a file.")] = _P.templates,
    models: Annotated[str, typer.Option(help="Model preset: 'default' (clip:ViT-L-14/openai + sam:vit_h) or 'tiny' (random, for tests/offline demos).")] = _P.models,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model, e.g. clip:ViT-B-16/openai or clip:ViT-L-14/PATH (see `ovlabel models`).")] = None,
    sam: Annotated[Optional[str], typer.Option(help="SAM model: sam:vit_h|vit_l|vit_b[/PATH or URL], or SAM 2: sam2:hiera_large|hiera_base_plus|hiera_small|hiera_tiny[/PATH] (extra 'sam2').")] = None,
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
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile SAM's encoder and mask decoder (slow first images; speed only).")] = _P.compile,
    sdpa: Annotated[bool, typer.Option("--sdpa/--no-sdpa", help="Fused attention (scaled_dot_product_attention) in SAM's mask decoder (speed only).")] = _P.sdpa,
    points_per_side: PointsPerSide = None, points_per_batch: PointsPerBatch = None, pred_iou_thresh: PredIou = None,
    stability_thresh: Stability = None, stability_offset: StabilityOffset = None, box_nms_thresh: BoxNms = None,
    min_area: MinArea = None, max_area: MaxArea = None, min_region_area: MinRegion = None,
    classifier: Classifier = None, ensemble_lambda: EnsembleLambda = None, crop_templates: CropTemplates = None,
    top_k: TopK = None, stage12_ratio: Ratio = None, seed: Seed = None, paint: Paint = None,
    skip_covered: SkipCovered = None,
):
    """Label IMAGES with FMbSeg's Stage 1: CLIP crop detection and SAM queried with CLIP points (1.1), and
    SAM's automatic masks classified by CLIP (1.2), sharing one SAM image embedding per image."""
    over = _stage12(points_per_side, points_per_batch, pred_iou_thresh, stability_thresh, stability_offset,
                    box_nms_thresh, min_area, max_area, min_region_area, classifier, ensemble_lambda,
                    crop_templates, top_k, stage12_ratio, seed, paint, skip_covered)
    cfg = _guard(lambda: PseudoLabelConfig(
        vocab=vocab, templates=templates, models=models, clip=clip, sam=sam, device=device, precision=precision,
        stages=stages,
        detect=DetectConfig(
            resolution=resolution, crop_size=crop_size, overlap=overlap, max_aspect=max_aspect,
            min_crops=min_crops, points_per_class=points, multimask=multimask,
            clip_batch_size=clip_batch_size, sam_batch_size=sam_batch_size,
        ),
        automask=AutoMaskConfig(**over["automask"]), classify=ClassifyConfig(**over["classify"]),
        merge=MergeConfig(**over["merge"]),
        image_batch=image_batch, overwrite=overwrite, overlays=overlays, progress=progress,
        compile=compile, sdpa=sdpa,
    ))
    _heavy_setup()
    from ovlabel.pipeline import run

    report_run(_guard(lambda: run(images, out or _default_out(images), cfg)))


@app.command("classify-masks")
def classify_masks_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by pseudo-label.")],
    images: Annotated[Optional[Path], typer.Option(help="Where the run's images are now, if they moved.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N [default: the run's].", show_default=False)] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32, fp16, bf16 [default: the run's].", show_default=False)] = None,
    image_batch: Annotated[Optional[int], typer.Option(help="Images in flight at once [default: the run's].", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images already done (and allow changed Stage 1.1 settings).")] = False,
    overlays: Annotated[Optional[bool], typer.Option("--overlays/--no-overlays", help="Write overlays [default: as the run did].", show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    points_per_side: PointsPerSide = None, points_per_batch: PointsPerBatch = None, pred_iou_thresh: PredIou = None,
    stability_thresh: Stability = None, stability_offset: StabilityOffset = None, box_nms_thresh: BoxNms = None,
    min_area: MinArea = None, max_area: MaxArea = None, min_region_area: MinRegion = None,
    classifier: Classifier = None, ensemble_lambda: EnsembleLambda = None, crop_templates: CropTemplates = None,
    top_k: TopK = None, stage12_ratio: Ratio = None, seed: Seed = None, paint: Paint = None,
    skip_covered: SkipCovered = None,
):
    """Add Stage 1.2 (SAM automatic masks classified by CLIP) to an existing run, reusing its Stage 1.1
    masks, and rewrite its masks.parquet, coco.json and label maps atomically. Also re-merges a run's
    stages after a change of --stage12-ratio, --seed or --paint without recomputing anything."""
    over = _stage12(points_per_side, points_per_batch, pred_iou_thresh, stability_thresh, stability_offset,
                    box_nms_thresh, min_area, max_area, min_region_area, classifier, ensemble_lambda,
                    crop_templates, top_k, stage12_ratio, seed, paint, skip_covered)
    _heavy_setup()
    from ovlabel.classify_masks import classify_masks

    report_run(_guard(lambda: classify_masks(
        run_dir, images=images, device=device, precision=precision, image_batch=image_batch,
        overwrite=overwrite or None, overlays=overlays, progress=progress, **over,
    )))


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by pseudo-label.")],
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the images moved since the run.")] = None,
):
    """Write coloured overlays with a legend for every labelled image of a run (RUN/overlays/)."""
    from ovlabel.show import show_run

    n, dest = _guard(lambda: show_run(run_dir, images))
    typer.echo(f"{n} overlays -> {dest}")
