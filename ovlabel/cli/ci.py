"""CI commands: ``diff`` (label drift between two runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app


@app.command("diff")
def diff_cmd(
    run_a: Annotated[Path, typer.Argument(help="The earlier run directory (e.g. the previous CI labels).")],
    run_b: Annotated[Path, typer.Argument(help="The later run directory.")],
    fail_above: Annotated[Optional[float], typer.Option(help="Exit with status 3 when the drift exceeds this (0 to 1; 0 = any change fails).", show_default=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the full report (per image, per class) as JSON to this file.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write a Markdown summary to this file (append it to $GITHUB_STEP_SUMMARY in CI).")] = None,
    top: Annotated[int, typer.Option(help="Images and classes listed in the printed summary.")] = 10,
):
    """Compare two runs' label maps: per-image and per-class IoU, images added or removed, and the drift
    = 1 - pixel agreement over the images whose input is the same in both runs. Exit status: 0, or 3 when
    the drift exceeds --fail-above (2 for bad input)."""
    from ovlabel.diff import DRIFT_EXIT_CODE, diff_runs
    from ovlabel.errors import OvlabelError
    from ovlabel.io.atomic import write_json, write_text

    def check():
        if fail_above is not None and not 0 <= fail_above <= 1:
            raise OvlabelError(f"--fail-above {fail_above} is invalid: give a fraction of pixels in [0, 1]")
        if top < 0:
            raise OvlabelError(f"--top {top} is invalid: give 0 or more")
        return diff_runs(run_a, run_b)

    report = _guard(check)
    typer.echo(report.describe(top))
    if json_out is not None:
        write_json(json_out, report.to_json())
    if markdown is not None:
        write_text(markdown, report.to_markdown(top))
    if fail_above is not None and report.drift > fail_above:
        typer.echo(f"drift {report.drift:.4f} exceeds --fail-above {fail_above}", err=True)
        raise typer.Exit(DRIFT_EXIT_CODE)
