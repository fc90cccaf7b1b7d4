"""PnP-OVSS commands: ``salience`` (BLIP GradCAM + Salience DropOut + blur + CRF labels) and ``tune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, _heavy_setup, app, report_run
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.errors import OvlabelError
from ovlabel.salience_config import SalienceRunConfig, TuneConfig

Inputs = Annotated[Path, typer.Argument(help="A run directory (its images, vocabulary and per-image Stage 1.1 classes), or images: a folder, a list file or one image (with --vocab or --classes).")]
Classes = Annotated[Optional[str], typer.Option(help="Same as --vocab with a comma list, e.g. 'rocket,bridge'.")]


def _vocab(given: dict, classes: str | None) -> dict:
    """``given`` with ``--classes`` turned into ``vocab`` (one class needs a trailing comma to tell it from a
    preset name)."""
    if classes is None:
        return given
    if given.get("vocab"):
        raise OvlabelError("give --vocab or --classes, not both")
    return {**given, "vocab": classes if "," in classes else classes + ","}


@config_command(app, "salience", SalienceRunConfig, exclude=("salience.crf.use_soft",), params=[
    param("inputs", Inputs),
    param("out", Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")]),
    param("classes", Classes, None),
    param("params", Annotated[Optional[Path], typer.Option(help="Parameter file written by `ovlabel tune` (explicit options win).")], None),
])
def salience(inputs: Path, out: Path, classes: str | None, params: Path | None, given: dict):
    """Label images with PnP-OVSS: BLIP cross-attention sharpened by GradCAM, Salience DropOut, threshold,
    Gaussian blur and dense CRF. Writes the same run artifacts as pseudo-label."""
    from ovlabel.config.files import merge

    given = _guard(lambda: _vocab(given, classes))
    if params is not None:
        from ovlabel.training.tune import load_params

        tuned = _guard(lambda: load_params(params))
        sal = {k: v for k, v in tuned.items() if k != "blur_sigma"}
        if "blur_sigma" in tuned:
            sal["crf"] = {"blur_sigma": tuned["blur_sigma"]}
        given = merge({"salience": sal}, given)
    cfg = build_config(SalienceRunConfig, given)
    _heavy_setup()
    from ovlabel.labelling.salience import salience as run

    report_run(_guard(lambda: run(inputs, out, cfg)))


@config_command(app, "tune", TuneConfig, params=[
    param("inputs", Inputs),
    param("out", Annotated[Path, typer.Option("--out", "-o", help="Parameter file (JSON) to write; `salience --params` reads it.")]),
    param("classes", Classes, None),
])
def tune(inputs: Path, out: Path, classes: str | None, given: dict):
    """Tune PnP-OVSS's layer, head, threshold and blur without labels: random search with the CLIP reward of
    PnP-OVSS §3.4 (a masked image must look more like its class to CLIP than a black image does)."""
    cfg = build_config(TuneConfig, _guard(lambda: _vocab(given, classes)))
    _heavy_setup()
    from ovlabel.training.tune import tune as run_tune

    doc = _guard(lambda: run_tune(inputs, out, cfg))
    p = doc["params"]
    typer.echo(f"best of {len(doc['trials'])} trials: " + ", ".join(f"{k}={v}" for k, v in p.items())
               + f" (reward {doc['reward']:g} of {doc['max_reward']} classes on {len(doc['images'])} images) -> {out}")
