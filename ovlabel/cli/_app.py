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


#: How the running command words an error (set by :func:`ovlabel.cli._options.config_command`: a bad setting
#: is named by the option that sets it); None = the error's own message.
render_error = None


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
    global render_error
    render_error = None  # each invocation starts with the plain wording (tests invoke many in one process)


def report_run(summary, done: int | None = None) -> None:
    """Print a run's summary and its first failures; exit 1 when it had images and none was done
    (``done``: how many were; default ``summary.labelled``)."""
    typer.echo(summary.describe())
    for what, listed in (("failed", summary.failures), ("skipped", getattr(summary, "skipped", []))):
        for rel, reason in listed[:10]:
            typer.echo(f"  {what}: {rel}: {reason}", err=True)
        if len(listed) > 10:
            typer.echo(f"  ... and {len(listed) - 10} more {what} (see manifest.parquet)", err=True)
    if summary.total and (summary.labelled if done is None else done) == 0:
        raise typer.Exit(1)


def _guard(fn):
    """Run ``fn``; a user-facing error becomes one message on stderr and its exit code (2: bad input or
    location, 1: a run that failed on the way)."""
    try:
        return fn()
    except OvlabelError as exc:
        typer.echo(f"error: {render_error(exc) if render_error else exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _heavy_setup() -> None:
    import torch

    # Random-initialised (tiny) models can produce denormals that slow CPU kernels ~12x.
    torch.set_flush_denormal(True)
