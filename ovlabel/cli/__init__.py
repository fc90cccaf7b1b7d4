"""The ``ovlabel`` command line. Thin by design: typed options, one call into a stage function, an exit code.

Importing this package must not import torch (``ovlabel --help`` stays instant); commands import their
stage lazily. Exit codes: 0 success, 1 every image failed, 2 bad input or options (message, no traceback),
3 ``diff --fail-above``: the label drift exceeds the threshold.

One module per group of commands; importing it registers its commands on :data:`app`. The order of
:data:`COMMAND_MODULES` is the order of ``ovlabel --help``.
"""

from __future__ import annotations

import importlib

from ovlabel.cli._app import app

COMMAND_MODULES = ("label", "salience", "align", "mpt", "evaluate", "report", "benchmark", "export", "ci", "info")

for _name in COMMAND_MODULES:
    importlib.import_module(f"ovlabel.cli.{_name}")

__all__ = ["app"]
