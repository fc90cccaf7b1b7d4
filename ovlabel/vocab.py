"""Vocabularies (the class names to label) and prompt templates.

``--vocab`` accepts a preset name, a text file (one class per line, synonyms separated by commas), or a
comma list. ``--templates`` accepts a named template set or a text file (one template per line, each
with one ``{}``). The default template set is FMbSeg's single "a photo of a {}." (seed 003 §4.1,
"Metrics"); ``vild`` is the 14-template ensemble OVSeg uses (seed 002 appendix A.2); ``imagenet`` is the
80 CLIP ImageNet templates; ``raw`` is the bare class name (``tune``'s reward, as PnP-OVSS's released search).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ovlabel.errors import OvlabelError

#: Preset vocabularies, in the label order of each dataset's standard label maps.
PRESET_VOCABULARIES = {
    "coco-stuff": "COCO-Stuff 164k, 80 things + 91 stuff (171)",
    "coco-object": "COCO 80 object classes",
    "voc": "PASCAL VOC, 20 classes without background",
    "voc-bg": "PASCAL VOC, background + 20 classes (21)",
    "coco-stuff-stuff": "the 91 stuff classes of COCO-Stuff (FMbSeg's stand-ins for PV-21's background)",
    "voc-background-stuff": "SCLIP's 26 stuff words prompted for VOC's background (configs/cls_voc21.txt)",
    "pascal-context": "PASCAL-Context, 59 classes",
    "pascal-context-60": "PASCAL-Context, background + 59 classes (60)",
    "ade20k": "ADE20K SceneParsing, 150 classes",
    "cityscapes": "Cityscapes, 19 train-id classes",
}

#: Named prompt-template sets.
TEMPLATE_SETS = {
    "fmbseg": "FMbSeg's single template 'a photo of a {}.' (seed 003 §4.1)",
    "vild": "the 14 ViLD templates used by OVSeg (seed 002 appendix A.2)",
    "imagenet": "the 80 CLIP ImageNet templates (Radford et al. 2021)",
    "raw": "the class name alone, '{}' (PnP-OVSS's released reward search feeds CLIP the bare class names)",
}

#: Label maps store class indices in uint8 with 255 meaning unlabeled.
MAX_CLASSES = 255
#: The label-map value of unlabeled pixels (and of "ignore" in ground truth), mmsegmentation's convention.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class VocabClass:
    """One class: ``name`` (its label, the first synonym) and every synonym used for prompting."""

    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes; a class's position is its label-map index."""

    classes: tuple[VocabClass, ...]
    source: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        """``{"source", "classes": [names], "synonyms": {name: [all synonyms]}}`` (synonyms only for classes
        that have more than their name)."""
        return {
            "source": self.source,
            "classes": self.names,
            "synonyms": {c.name: list(c.synonyms) for c in self.classes if len(c.synonyms) > 1},
        }

    @classmethod
    def from_json(cls, doc: dict) -> "Vocabulary":
        """Inverse of :meth:`to_json` (a run's ``settings.vocabulary``)."""
        syn = doc.get("synonyms") or {}
        return cls(tuple(VocabClass(n, tuple(syn.get(n) or [n])) for n in doc["classes"]), doc.get("source", "run"))


@dataclass(frozen=True)
class Templates:
    """A prompt-template set: ``name`` (preset name or file path) and its templates, each with one ``{}``."""

    name: str
    templates: tuple[str, ...]

    @property
    def key(self) -> str:
        """Short content hash: two sets with the same templates share cached text embeddings."""
        return hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"name": self.name, "templates": list(self.templates)}


def _data_lines(folder: str, name: str) -> list[str]:
    text = resources.files("ovlabel").joinpath("data", folder, f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def prompt_name(name: str) -> str:
    """The text put into a template for a class name: ``_`` and ``-`` become spaces and a trailing
    ``other`` (COCO-Stuff's ``wall-other``) is dropped; the class keeps its name in every artifact."""
    words = name.replace("_", " ").replace("-", " ").split()
    if len(words) > 1 and words[-1].lower() == "other":
        words = words[:-1]
    return " ".join(words)


def _build(rows: list[tuple[str, list[str]]], source: str) -> Vocabulary:
    """Validate ``rows`` of (where, synonyms) into a Vocabulary; ``where`` locates a row in messages."""
    seen: dict[str, str] = {}
    classes = []
    for where, synonyms in rows:
        for syn in synonyms:
            if not syn:
                raise OvlabelError(f"empty class name {where} in vocabulary {source}")
            key = _norm(syn)
            if key in seen:
                raise OvlabelError(
                    f"duplicate class name '{syn}' {where} in vocabulary {source} (already given {seen[key]})"
                )
            seen[key] = where
        classes.append(VocabClass(name=synonyms[0], synonyms=tuple(synonyms)))
    if not classes:
        raise OvlabelError(f"vocabulary {source} has no classes")
    if len(classes) > MAX_CLASSES:
        raise OvlabelError(
            f"vocabulary {source} has {len(classes)} classes; label maps hold at most {MAX_CLASSES} "
            f"(uint8 with 255 = unlabeled)"
        )
    return Vocabulary(classes=tuple(classes), source=source)


def load_vocabulary(value: str) -> Vocabulary:
    """Resolve a ``--vocab`` value: a preset name, a text file, or a comma list.

    A file has one class per line; commas on a line separate synonyms of that class (the first is its
    name); blank lines and lines starting with ``#`` are skipped. A comma list is one class per item;
    a single class needs a trailing comma (``rocket,``) so that a mistyped preset name is an error.
    Raises :class:`OvlabelError` naming the bad value for empty, duplicate or unknown names.
    """
    raw = value.strip()
    if not raw:
        raise OvlabelError(f"empty vocabulary {value!r}; presets: {', '.join(PRESET_VOCABULARIES)}")
    if raw in PRESET_VOCABULARIES:
        names = _data_lines("vocabularies", raw)
        return _build([(f"on line {i + 1}", [n]) for i, n in enumerate(names)], f"preset:{raw}")
    path = Path(raw).expanduser()
    if path.is_file():
        return _load_vocab_file(path)
    if "," not in raw:
        looks_like_path = "/" in raw or "\\" in raw or raw.endswith(".txt")
        if looks_like_path:
            raise OvlabelError(f"vocabulary file '{raw}' does not exist")
        raise OvlabelError(
            f"unknown vocabulary '{raw}': not a preset ({', '.join(PRESET_VOCABULARIES)}) and not an existing "
            f"file; for your own classes give a comma list such as 'rocket,bridge' (one class: 'rocket,')"
        )
    items = [item.strip() for item in raw.split(",")]
    if items[-1] == "":
        items = items[:-1]
    rows = [(f"at position {i + 1}", [" ".join(item.split())]) for i, item in enumerate(items)]
    return _build(rows, f"list:{raw!r}")


def _load_vocab_file(path: Path) -> Vocabulary:
    from ovlabel.io.text import read_user_text

    text = read_user_text(path, "vocabulary file")
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append((f"on line {lineno}", [" ".join(s.split()) for s in line.split(",")]))
    return _build(rows, f"file:{path.resolve()}")


def load_templates(value: str) -> Templates:
    """Resolve a ``--templates`` value: a set name (``fmbseg``, ``vild``, ``imagenet``) or a text file with
    one template per line, each containing exactly one ``{}``."""
    raw = value.strip()
    if raw in TEMPLATE_SETS:
        return Templates(name=raw, templates=tuple(_data_lines("templates", raw)))
    path = Path(raw).expanduser()
    if not path.is_file():
        raise OvlabelError(
            f"unknown template set '{value}': use one of {', '.join(TEMPLATE_SETS)} or a text file with one "
            f"template per line containing '{{}}'"
        )
    from ovlabel.io.text import read_user_text

    lines = [ln.strip() for ln in read_user_text(path, "template file").split("\n")]
    templates = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not templates:
        raise OvlabelError(f"template file '{path}' has no templates")
    for t in templates:
        if t.count("{}") != 1:
            raise OvlabelError(f"template {t!r} in '{path}' must contain exactly one '{{}}' for the class name")
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise OvlabelError(f"duplicate template {dup!r} in '{path}'")
    return Templates(name=str(path.resolve()), templates=templates)
