"""Validation shared by the config dataclasses."""

from __future__ import annotations

from ovlabel.errors import OvlabelError


def _check(obj, checks) -> None:
    for ok, name, accepted in checks:
        if not ok:
            raise OvlabelError(f"{name}={getattr(obj, name)!r} is invalid: expected {accepted}")
