"""The ``ovlabel`` command (console script and ``python -m ovlabel``): on Linux, restart once with the
allocator settings of :mod:`ovlabel.malloc` before importing anything else, then run the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from ovlabel.malloc import reexec_with_malloc_tuning

    reexec_with_malloc_tuning([sys.executable, "-m", "ovlabel", *sys.argv[1:]])
    from ovlabel.cli import app

    app(prog_name="ovlabel")
