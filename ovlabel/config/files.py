"""Configs from files and from option overrides: one way to build any config dataclass.

A config file is TOML (``.toml``) or JSON (``.json``) with the config's field names, nested configs as
tables: the ``last_invocation.parameters`` of a ``run.json`` is such a file's content, so a run can be
repeated from its provenance. Values are applied in order: the dataclass defaults (or a run's own
config), then the file, then what was given on the command line. The result is validated by the
dataclasses themselves, and bad values are reported with the command-line option that sets them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from ovlabel.errors import OvlabelError, SettingError


def load_config_file(path: str | Path) -> dict:
    """The nested dict of a TOML or JSON config file; OvlabelError naming the file for anything else."""
    from ovlabel.io.text import read_user_text

    p = Path(path).expanduser()
    text = read_user_text(p, "--config file")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            doc = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            raise OvlabelError(f"--config '{path}' must be a .toml or .json file")
    except (ValueError, TypeError) as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise OvlabelError(f"--config '{path}' is not valid {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise OvlabelError(f"--config '{path}' must hold a table of settings, not {type(doc).__name__}")
    return doc


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` applied; nested dicts are merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(cls, values: dict, base: Any = None, where: str = "") -> Any:
    """An instance of the config dataclass ``cls`` with ``values`` (a nested dict of field names) applied
    to ``base`` (an instance; default: the defaults). Unknown names raise OvlabelError listing the known."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise OvlabelError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(where + u for u in unknown)}"
                           f" for {cls.__name__}: expected one of {', '.join(sorted(fields))}")
    base = cls() if base is None else base
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            if isinstance(value, dict):
                value = build(hints[name], value, getattr(base, name), where=f"{where}{name}.")
            elif not isinstance(value, hints[name]):
                raise OvlabelError(f"setting {where}{name} must be a table of {hints[name].__name__} settings")
        kwargs[name] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except SettingError as exc:  # named by its dotted setting (``detect.min_crops``) from here up
        raise exc.under(where) if where else exc from None
    except TypeError as exc:  # a value of the wrong type that a check compared (``"abc" >= 1``)
        raise OvlabelError(f"a setting of {where.rstrip('.') or cls.__name__} has a value of the wrong type "
                           f"({exc})") from None
