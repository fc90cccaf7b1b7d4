"""The layers of docs/architecture.md, checked on every module's imports (module level and inside
functions), and no import circle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ovlabel"

#: layer -> module prefixes (the longest prefix decides)
LAYERS = {
    "cli": ["ovlabel.cli", "ovlabel.__main__", "ovlabel.entry"],
    "api": ["ovlabel.api", "ovlabel.bench", "ovlabel.training"],
    "labelling": ["ovlabel.labelling"],
    "readers": ["ovlabel.export", "ovlabel.report", "ovlabel.show"],
    "engine": ["ovlabel.engine"],
    "methods": ["ovlabel.stages", "ovlabel.crf", "ovlabel.loss", "ovlabel.features", "ovlabel.text"],
    "models": ["ovlabel.models"],
    "data": ["ovlabel.artifacts", "ovlabel.dataset", "ovlabel.masks", "ovlabel.vocab", "ovlabel.overlays",
             "ovlabel.evaluate", "ovlabel.diff", "ovlabel.merge", "ovlabel.quality", "ovlabel.captions",
             "ovlabel.entities"],
    "config": ["ovlabel.config", "ovlabel.salience_config", "ovlabel.protocols"],
    "base": ["ovlabel.io", "ovlabel.errors", "ovlabel.device", "ovlabel.cache", "ovlabel.malloc",
             "ovlabel.provenance", "ovlabel"],
}
BELOW = {  # what each layer may import besides itself
    "cli": {"api", "labelling", "readers", "engine", "methods", "models", "data", "config", "base"},
    "api": {"labelling", "readers", "engine", "methods", "models", "data", "config", "base"},
    "labelling": {"engine", "methods", "models", "data", "config", "base"},
    "readers": {"engine", "data", "config", "base"},
    "engine": {"data", "config", "base"},
    "methods": {"models", "data", "config", "base"},
    "models": {"data", "config", "base"},
    "data": {"config", "base"},
    "config": {"base"},
    "base": set(),
}


#: the package's lazy attribute access to the Python API (``ovlabel.label``: ovlabel/__init__.py ``__getattr__``)
LAZY_API = {("ovlabel", "ovlabel.api")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    best = max(((p, layer) for layer, ps in LAYERS.items() for p in ps
                if module == p or module.startswith(p + ".")), key=lambda x: len(x[0]))
    return best[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ovlabel")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ovlabel"):
            for a in node.names:  # ``from ovlabel.stages import segment`` imports ovlabel.stages.segment
                sub = f"{node.module}.{a.name}"
                out.add(sub if (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PKG.parent / Path(*sub.split("."))).is_dir() else node.module)
    out.discard(me)
    return out


MODULES = {module_name(p): p for p in PKG.rglob("*.py") if "dinov2_hub" not in p.parts}


def test_every_module_imports_only_its_own_layer_and_the_layers_below():
    bad = []
    for name, path in sorted(MODULES.items()):
        mine = layer_of(name)
        for imp in sorted(imports_of(path)):
            theirs = layer_of(imp)
            if theirs != mine and theirs not in BELOW[mine] and imp != "ovlabel" and (name, imp) not in LAZY_API:
                bad.append(f"{name} ({mine}) imports {imp} ({theirs})")
    assert not bad, "\n".join(bad)


def test_no_two_modules_import_each_other():
    graph = {name: {i for i in imports_of(p) if i in MODULES} for name, p in MODULES.items()}
    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                      if a in graph.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not circles, circles
