"""The ``export`` command: a run's labels as YOLO-seg, VOC, MMSegmentation, Hugging Face, FiftyOne or
Label Studio datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ovlabel.cli._app import _guard, app
from ovlabel.cli._options import build_config, config_command, param
from ovlabel.config.export import FORMATS, ExportConfig


@config_command(app, "export", ExportConfig, params=[
    param("run", Annotated[Path, typer.Argument(help="A complete run directory (made by pseudo-label, refine, segment ...).")]),
    param("out", Annotated[Path, typer.Option("--out", "-o", help="Output folder; each format writes OUT/<format>/.")]),
    param("format", Annotated[list[str], typer.Option("--format", "-f", help=f"Format(s): {', '.join(FORMATS)}. Repeat the option or give a comma list.")]),
    param("progress", Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")], False),
])
def export_cmd(run: Path, out: Path, format: list[str], progress: bool, given: dict):
    """Export a run's labels (reads its artifacts only; no model). Resumable and deterministic."""
    from ovlabel.export import export_run

    cfg = build_config(ExportConfig, given)
    typer.echo(_guard(lambda: export_run(run, out, format, cfg, progress=progress)).describe())
