"""Image captions as a source of classes: per-image class restrictions (``--captions``) and dataset
vocabularies of the most frequent caption entities (``ovlabel vocab --from-captions``).

OVSegmentor (seed 001) learns from image-caption pairs and builds its entity set from the captions: the
100 "commonly appeared entities", non-visual ones discarded ("Pre-training dataset: CC4M"); OVSeg (seed
002 §3.2) treats the nouns of an image's caption as the classes that image may contain ("we extract all
nouns ... and treat them as potential classes"). Entities are found by :mod:`ovlabel.entities`.

Captions file: JSON lines (``.jsonl``/``.ndjson``/``.json``: one object per line with an ``image`` and a
``caption`` field) or CSV (``.csv``/``.tsv``: a header row naming an ``image`` and a ``caption`` column),
UTF-8 with or without a byte-order mark. ``file``, ``file_name`` and ``filename`` are accepted for
``image``. An image may have several rows (COCO has five captions per image): its entities are the union.
``image`` is the image's path relative to the input root (``/`` or ``\\`` separators); a row that matches
no such path is matched by its file name when that name is unique among the input images.

The rule for images the captions say nothing about (ovlabel's choice; the seeds filter such images out
of their training sets, but a labelling run must say what it does with every image): an image with no
caption row, with only empty captions, or whose captions name no class of the vocabulary is labelled
with ``missing``: ``"all"`` (default: the whole vocabulary, as without captions; a caption that names
nothing we know says nothing about what is in the image) or ``"none"`` (no class: the image is left
unlabelled). The reason of every image is recorded (:meth:`CaptionClasses.to_json`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ovlabel.errors import OvlabelError

IMAGE_KEYS = ("image", "file", "file_name", "filename")
CAPTION_KEY = "caption"
MISSING_RULES = ("all", "none")


@dataclass(frozen=True)
class Caption:
    """One row of a captions file: ``image`` as written (normalised to ``/``), ``caption`` (may be
    empty), ``line`` (1-based line of the file, for messages)."""

    image: str
    caption: str
    line: int


def _norm_image(value: str) -> str:
    p = str(value).strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def read_captions(path: str | Path) -> list[Caption]:
    """Every row of a captions file (see the module docstring for the formats). Raises
    :class:`OvlabelError` naming the file and line of the first bad row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OvlabelError(f"captions file '{path}' does not exist")
    from ovlabel.io.text import read_user_text

    text = read_user_text(path, "captions file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith("{"):
        return _read_jsonl(path, text)
    raise OvlabelError(f"captions file '{path}': unknown format; use JSON lines (.jsonl) or CSV (.csv, .tsv) with image and caption")


def _field(obj: dict, where: str) -> tuple[str, str]:
    keys = {str(k).strip().lower(): k for k in obj}
    img = next((obj[keys[k]] for k in IMAGE_KEYS if k in keys), None)
    if img is None or not str(img).strip():
        raise OvlabelError(f"{where}: no image (expected a field named {' or '.join(IMAGE_KEYS)})")
    if CAPTION_KEY not in keys:
        raise OvlabelError(f"{where}: no '{CAPTION_KEY}' field")
    cap = obj[keys[CAPTION_KEY]]
    if cap is not None and not isinstance(cap, str):
        raise OvlabelError(f"{where}: the caption must be text, got {type(cap).__name__}")
    return _norm_image(img), cap or ""


def _read_jsonl(path: Path, text: str) -> list[Caption]:
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"captions file '{path}' line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OvlabelError(f"{where}: not a JSON object ({exc.msg}); each line must be like "
                               f'{{"image": "a.jpg", "caption": "a dog on a sofa"}}') from None
        if not isinstance(obj, dict):
            raise OvlabelError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        rows.append(Caption(*_field(obj, where), lineno))
    return rows


def _read_csv(path: Path, text: str, delimiter: str) -> list[Caption]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return []
    names = [h.strip().lower() for h in header]
    img_col = next((names.index(k) for k in IMAGE_KEYS if k in names), None)
    if img_col is None or CAPTION_KEY not in names:
        raise OvlabelError(f"captions file '{path}' line 1: the header {header!r} must name an image column "
                           f"({' or '.join(IMAGE_KEYS)}) and a '{CAPTION_KEY}' column")
    cap_col = names.index(CAPTION_KEY)
    rows = []
    for record in reader:
        lineno = reader.line_num
        if not any(c.strip() for c in record):
            continue
        if len(record) <= max(img_col, cap_col):
            raise OvlabelError(f"captions file '{path}' line {lineno}: {len(record)} columns, the header has {len(header)}")
        rows.append(Caption(*_field({"image": record[img_col], "caption": record[cap_col]}, f"captions file '{path}' line {lineno}"), lineno))
    return rows


def _matcher(extra=(), parser="auto"):
    from ovlabel.entities import EntityMatcher, load_spacy

    return EntityMatcher(tuple(extra), load_spacy() if parser == "auto" else parser)


def entity_counts(path: str | Path, parser="auto") -> tuple[Counter, int, str | None]:
    """``(counts, captions, parser)``: per entity, the number of captions that name it (once per caption,
    as OVSegmentor keeps the unique entities of a caption), the number of non-empty captions, and the
    spaCy pipeline used (None: the offline default)."""
    m = _matcher(parser=parser)
    counts: Counter = Counter()
    n = 0
    for row in read_captions(path):
        if row.caption.strip():
            n += 1
            counts.update({m.entity(t) for t in m.terms_of(row.caption)})
    return counts, n, m.parser_name


def top_entities(counts: Counter, top: int) -> list[tuple[str, int]]:
    """The ``top`` most frequent entities as ``(name as written, count)``, most frequent first, ties in
    alphabetical order of their keys."""
    if top < 1:
        raise OvlabelError(f"--top {top} is invalid: expected an integer >= 1")
    from ovlabel.entities import display_names

    shown = display_names()
    return [(shown.get(e, e), n) for e, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def entity_vocabulary(path: str | Path, top: int = 100, parser="auto") -> list[tuple[str, int]]:
    """The ``top`` most frequent entities of a captions file as ``(name, captions naming it)``
    (OVSegmentor's "100 commonly appeared entities"; see :func:`entity_counts`)."""
    return top_entities(entity_counts(path, parser)[0], top)


class CaptionClasses(dict):
    """``{image rel: sorted vocabulary indices}`` for every input image, plus ``reasons`` (``caption``,
    ``no caption``, ``empty caption``, ``no known class``) and what :meth:`to_json` records."""

    def to_json(self) -> dict:
        return dict(self.info) | {"reasons": dict(sorted(Counter(self.reasons.values()).items()))}


def class_keys(vocab) -> dict[str, set[int]]:
    """``{canonical term: vocabulary indices}`` of a vocabulary's class names and synonyms."""
    from ovlabel.entities import canonical, prompt_term

    keys: dict[str, set[int]] = {}
    for i, c in enumerate(vocab.classes):
        for s in c.synonyms:
            keys.setdefault(canonical(prompt_term(s)), set()).add(i)
    return keys


def classes_of(terms: list[str], keys: dict[str, set[int]]) -> set[int]:
    """Vocabulary indices named by caption ``terms``: a term that is a class's name or synonym names that
    class; otherwise it names the classes whose names are in its synonym group."""
    from ovlabel.entities import synonym_groups

    groups = synonym_groups()
    by_group: dict[str, set[int]] = {}
    for k, idx in keys.items():
        by_group.setdefault(groups.get(k, k), set()).update(idx)
    out: set[int] = set()
    for t in terms:
        out |= keys.get(t) or by_group.get(groups.get(t, t), set())
    return out


def captions_to_classes(captions_file: str | Path, vocab, image_rels: list[str], missing: str = "all",
                        parser="auto") -> CaptionClasses:
    """Per input image (``image_rels``: paths relative to the input root, ``/``-separated), the vocabulary
    indices its captions name, with the module docstring's rule for images without any (``missing``).
    Rows whose image is not among ``image_rels`` are counted in ``to_json()["unmatched_rows"]``."""
    if missing not in MISSING_RULES:
        raise OvlabelError(f"--captions-missing {missing!r} is invalid: use {' or '.join(MISSING_RULES)}")
    from ovlabel.cache import file_sha256

    rows = read_captions(captions_file)
    m = _matcher(extra=[s for c in vocab.classes for s in c.synonyms], parser=parser)
    keys = class_keys(vocab)
    rels = {_norm_image(r): r for r in image_rels}
    names = Counter(PurePosixPath(k).name for k in rels)
    by_name = {PurePosixPath(k).name: r for k, r in rels.items() if names[PurePosixPath(k).name] == 1}
    found: dict[str, set[int]] = {}
    nonempty: set[str] = set()
    unmatched = []
    for row in rows:
        rel = rels.get(row.image) or by_name.get(PurePosixPath(row.image).name)
        if rel is None:
            unmatched.append(f"line {row.line}: {row.image}")
            continue
        found.setdefault(rel, set())
        if row.caption.strip():
            nonempty.add(rel)
            found[rel] |= classes_of(m.terms_of(row.caption), keys)
    fallback = list(range(len(vocab))) if missing == "all" else []
    out = CaptionClasses()
    out.reasons = {}
    for r in image_rels:
        if found.get(r):
            out[r], out.reasons[r] = sorted(found[r]), "caption"
        else:
            out[r] = list(fallback)
            out.reasons[r] = "no caption" if r not in found else ("empty caption" if r not in nonempty else "no known class")
    out.info = {"file": Path(captions_file).name, "sha256": file_sha256(Path(captions_file).expanduser()),
                "missing": missing, "parser": m.parser_name, "rows": len(rows),
                "unmatched_rows": len(unmatched), "unmatched_examples": unmatched[:5]}
    return out
