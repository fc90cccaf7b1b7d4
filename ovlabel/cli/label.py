"""Labelling commands: ``pseudo-label``, ``classify-masks`` and ``show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.config import PseudoLabelConfig

Images = Annotated[Path, typer.Argument(help="Folder of images (recursive), a text file listing image paths, or one image.")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write (default: ovlabel-runs/<input name>).")]
RunDir = Annotated[Path, typer.Argument(help="A run directory written by pseudo-label.")]


def default_out(images: Path, suffix: str = "") -> Path:
    """``ovlabel-runs/<input name><suffix>``: where a run goes when ``--out`` is not given."""
    name = images.expanduser().resolve().name or "images"
    return Path("ovlabel-runs") / f"{Path(name).stem}{suffix}"


@config_command(app, "pseudo-label", PseudoLabelConfig, params=[param("images", Images), param("out", Out, None)])
def pseudo_label(images: Path, out: Path | None, given: dict):
    """Label IMAGES with FMbSeg's Stage 1: CLIP crop detection and SAM queried with CLIP points (1.1), and
    SAM's automatic masks classified by CLIP (1.2), sharing one SAM image embedding per image."""
    cfg = build_config(PseudoLabelConfig, given)
    _heavy_setup()
    from ovlabel.labelling.stage1 import label

    report_run(_guard(lambda: label(images, out or default_out(images), cfg)))


# classify-masks: Stage 1.2, merge and execution options; a setting not given keeps the run's own value
# (or the default, if the run has no Stage 1.2 yet).
@config_command(app, "classify-masks", PseudoLabelConfig, default_note="the run's",
                only=("automask", "classify", "merge", "device", "precision", "devices", "image_batch", "overwrite",
                      "overlays", "progress", "executor", "workers", "ray_address"),
                params=[param("run_dir", RunDir), param("images", Annotated[Optional[Path], typer.Option(
                    help="Where the run's images are now, if they moved.")], None)])
def classify_masks_cmd(run_dir: Path, images: Path | None, given: dict):
    """Add Stage 1.2 (SAM automatic masks classified by CLIP) to an existing run, reusing its Stage 1.1
    masks, and rewrite its masks.parquet, coco.json and label maps atomically. Also re-merges a run's
    stages after a change of --stage12-ratio, --seed or --paint without recomputing anything."""
    _heavy_setup()
    from ovlabel.labelling.stage1 import classify_masks

    report_run(_guard(lambda: classify_masks(run_dir, images=images, given=given)))


@app.command()
def show(
    run_dir: RunDir,
    images: Annotated[Optional[Path], typer.Option(help="Image root, if the images moved since the run.")] = None,
    review: Annotated[Optional[int], typer.Option("--review", help="Only the N least certain images (lowest estimated label quality), listed.", show_default=False)] = None,
):
    """Write coloured overlays with a legend for every labelled image of a run (RUN/overlays/)."""
    from ovlabel.show import review_list, show_run

    n, dest = _guard(lambda: show_run(run_dir, images, review))
    if review is not None:
        for line in review_list(run_dir, review):
            typer.echo(line)
    typer.echo(f"{n} overlays -> {dest}")
