"""Command-line options generated from config dataclasses (:func:`ovlabel.config._fields.knob`).

:func:`config_command` registers a command whose options are the fields of a config dataclass, nested
configs flattened (``--resolution`` sets ``detect.resolution``), plus ``--config FILE``. Every option
defaults to "not given", so the command body receives only what the user set, as a nested dict, and
builds its config with :func:`ovlabel.config.files.build` on top of the defaults, a config file, or a
run's own config. No command lists a config's options by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ovlabel.errors import OvlabelError, SettingError


@dataclass
class Opt:
    """One generated option: the config ``path`` it sets, its parameter ``name`` and Typer declaration."""

    path: tuple[str, ...]
    name: str
    decls: tuple[str, ...]
    kind: type
    help: str
    parse: Callable[[Any], Any] | None


def _base_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return str
    return hint if hint in (bool, int, float, str) else str


def _shown(value, md: dict) -> str:
    if md.get("shown"):
        return md["shown"]
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def options_for(cls, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (), base=None,
                default_note: str | None = None, _path: tuple[str, ...] = ()) -> list[Opt]:
    """The options of config dataclass ``cls`` (nested configs flattened). ``only``/``exclude``: top-level
    field names (or dotted paths) to keep or drop; ``base``: the instance whose values are shown as
    defaults (default: ``cls()``); ``default_note`` replaces every shown default (e.g. "the run's")."""
    from ovlabel.config.run import ModelRunConfig

    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    out = []
    shared = {f.name for f in dataclasses.fields(ModelRunConfig)}  # run options: listed last
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in shared):
        path = (*_path, f.name)
        dotted = ".".join(path)
        if (only is not None and not any(dotted == o or dotted.startswith(o + ".") for o in only)) or dotted in exclude:
            continue
        value = getattr(base, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += options_for(hints[f.name], only=only, exclude=exclude, base=value, default_note=default_note,
                               _path=path)
            continue
        md = f.metadata
        if not md.get("cli", False):
            continue
        kind = str if md.get("parse") else _base_type(hints[f.name])
        flag = md.get("flag") or "--" + f.name.replace("_", "-")
        if kind is bool and "/" not in flag and md.get("flag") is None:
            flag = f"{flag}/--no-{flag[2:]}"
        help_text = f"{md['help']} [default: {default_note or _shown(value, md)}]"
        out.append(Opt(path, "_".join(path), (flag,), kind, help_text, md.get("parse")))
    return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


class SettingNames:
    """Words a bad setting (:class:`~ovlabel.errors.SettingError`) the way the user gave it: by its option
    (``--min-crops 0 is invalid: ...``), or for a value from the ``--config`` file by its dotted name and
    the file (``detect.min_crops=0 is invalid: ... (from --config 'x.toml')``)."""

    def __init__(self, opts: list[Opt], cli: dict, from_file: dict, config_file: Path | None):
        self.flags = {o.path: o.decls[0].split("/")[0] for o in opts}
        self.cli, self.from_file, self.config_file = cli, from_file, config_file

    def render(self, exc: Exception) -> str:
        if not isinstance(exc, SettingError):
            return str(exc)
        path = tuple(exc.name.split("."))
        if _get(self.cli, path) is None and _get(self.from_file, path) is not None:
            return f"{exc} (from --config '{self.config_file}')"
        flag = self.flags.get(path) or next((f for p, f in self.flags.items() if p[-1] == path[-1]), None)
        if flag is None:
            return str(exc)
        value = exc.value
        shown = (",".join(map(str, value)) if isinstance(value, tuple) else
                 repr(value) if isinstance(value, str) and (not value or " " in value) else str(value))
        return exc.render(flag, shown)


def config_command(app: typer.Typer, name: str, cls, *, params: list[inspect.Parameter] = (),
                   only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (), default_note: str | None = None):
    """Register ``fn`` as command ``name``: its own ``params`` (arguments and options declared by hand, in
    order) followed by the options of config ``cls`` and ``--config FILE``. ``fn`` is called with its own
    params as keywords plus ``given``: the settings from the config file with the command-line options on
    top, as a nested dict of field names."""
    opts = options_for(cls, only=only, exclude=exclude, default_note=default_note)
    seen: dict[str, tuple] = {}
    for o in opts:
        flags = [d.split("/")[0] for d in o.decls]
        for fl in flags:
            assert fl not in seen, f"{name}: option {fl} would set both {seen[fl]} and {o.path}"
            seen[fl] = o.path

    def deco(fn):
        config_param = inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[Path], typer.Option(
                "--config", help="Settings from a TOML or JSON file (field names, nested tables; a run.json's "
                                 "last_invocation.parameters works); options given here win.", show_default=False)])
        generated = [
            inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[Optional[o.kind], typer.Option(*o.decls, help=o.help,
                                                                                  show_default=False)])
            for o in opts
        ]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
               else p for p in params]

        def command(**kwargs):
            from ovlabel.cli import _app
            from ovlabel.config.files import load_config_file, merge

            given: dict = {}
            for o in opts:
                value = kwargs.pop(o.name)
                if value is not None:
                    _set(given, o.path, value)
            config_file = kwargs.pop("config_file")
            from_file = _app._guard(lambda: load_config_file(config_file)) if config_file is not None else {}
            _app.render_error = SettingNames(opts, given, from_file, config_file).render
            for o in opts:
                value = _get(given, o.path)
                if value is not None and o.parse:
                    _set(given, o.path, _app._guard(lambda o=o, v=value: o.parse(v)))
            return fn(given=merge(from_file, given), **kwargs)

        command.__signature__ = inspect.Signature([*own, *generated, config_param])
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        app.command(name)(command)
        return fn

    return deco


def param(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    """A hand-declared parameter for :func:`config_command` (``annotation``: ``Annotated[type, typer.X(...)]``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def build_config(cls, given: dict, base=None):
    """:func:`ovlabel.config.files.build` reporting a bad value as a one-line error (exit 2)."""
    from ovlabel.cli._app import _guard
    from ovlabel.config.files import build

    return _guard(lambda: build(cls, given, base))


__all__ = ["OvlabelError", "Opt", "build_config", "config_command", "options_for", "param"]
