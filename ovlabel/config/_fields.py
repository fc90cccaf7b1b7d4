"""``knob``: a config field that also says how a user sets it (help text, command-line flag).

The command line is generated from these fields (:mod:`ovlabel.cli._options`), so a new setting is one
field with a docstring-like ``help``; nothing lists options by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def knob(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
         factory: Callable[[], Any] | None = None, parse: Callable[[str], Any] | None = None,
         cli: bool = True, shown: str | None = None) -> Any:
    """A dataclass field with CLI metadata.

    - ``help``: one sentence for ``--help``; the default is appended (``shown`` replaces its text).
    - ``flag``: the option's declaration (default ``--field-name``; booleans ``--name/--no-name``), e.g.
      ``--points`` or ``--multimask/--single-mask`` or ``--overwrite`` (a flag that only turns it on).
    - ``parse``: turns the command-line string into the field's value (e.g. ``"1.1,1.2"`` -> a tuple).
    - ``cli``: False keeps the field out of the command line (settable from ``--config`` files and Python).
    """
    md = {"help": help, "flag": flag, "parse": parse, "cli": cli, "shown": shown}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)
