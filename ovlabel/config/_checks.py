"""Validation shared by the config dataclasses."""

from __future__ import annotations

from ovlabel.errors import SettingError


def _check(obj, checks) -> None:
    """Raise :class:`~ovlabel.errors.SettingError` (field name, value, what is accepted) for the first
    ``(ok, field, accepted)`` of ``checks`` that is not ok. The CLI names the setting by its option
    (``--min-crops 0 is invalid: ...``), a config file or Python by its dotted name."""
    for ok, name, accepted in checks:
        if not ok:
            raise SettingError(name, getattr(obj, name), accepted)


def memory(nbytes: float) -> str:
    """A byte count for messages: ``"12.3 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError
