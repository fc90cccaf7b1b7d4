"""The Typer application object and the helpers every command module shares.

Kept apart from the command modules so that each of them can ``from ovlabel.cli._app import app`` without
a circular import; :mod:`ovlabel.cli` imports the command modules, which registers their commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ovlabel import __version__
from ovlabel.errors import OvlabelError

app = typer.Typer(
    name="ovlabel",
    help="Annotation-free semantic-segmentation labels from frozen foundation models (CLIP, SAM, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        typer.echo(f"ovlabel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """ovlabel: label image datasets for semantic segmentation with no human annotation."""


def report_run(summary, done: int | None = None) -> None:
    """Print a run's summary and its first failures; exit 1 when it had images and none was done
    (``done``: how many were; default ``summary.labelled``)."""
    typer.echo(summary.describe())
    for rel, reason in summary.failures[:10]:
        typer.echo(f"  failed: {rel}: {reason}", err=True)
    if len(summary.failures) > 10:
        typer.echo(f"  ... and {len(summary.failures) - 10} more (see manifest.parquet)", err=True)
    if summary.total and (summary.labelled if done is None else done) == 0:
        raise typer.Exit(1)


def _guard(fn):
    """Run ``fn``; a user-facing error becomes a message on stderr and exit code 2."""
    try:
        return fn()
    except OvlabelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _heavy_setup() -> None:
    import torch

    # Random-initialised (tiny) models can produce denormals that slow CPU kernels ~12x.
    torch.set_flush_denormal(True)
