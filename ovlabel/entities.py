"""Visual entities of a caption, offline: tokens, noun lemmas, known terms, synonym groups, a stop list.

OVSegmentor (seed 001) trains on captions whose "visual entities" it extracts against a fixed list of
frequent entities ("CC4M: a subset of CC12M that contain 100 commonly appeared entities (e.g. person,
shirt, cat, dog, bus, cup, knife, plant, ...), and non visual entities (e.g. view, illustration, night)
are discarded"). Its released code (Jazzcharles/OVSegmentor, datasets/clip_dataset.py ``judge_noun``)
lemmatises each caption word (NLTK's WordNet lemmatiser), maps it through a synonym dictionary
(``syn_dict``: man/woman/girl/... -> people, bike -> bicycle, ...) and keeps it when it is one of the
entities. OVSeg (seed 002 §3.2) instead extracts "all nouns using an off-the-shelf language parser (Bird
et al., 2009)", i.e. NLTK's tagger.

Both need data that is downloaded at run time (NLTK's WordNet and tagger models), which ovlabel may not
do. So, by default (ovlabel's choice, everything ships with the pip install):

- words are Unicode-normalised (NFKC), case-folded, split on anything that is not a letter, digit or an
  inner hyphen/apostrophe; a possessive ``'s`` is dropped;
- each word is reduced to its noun lemma by LemmInflect's dictionary (``men`` -> ``man``, ``shelves`` ->
  ``shelf``, ``buses`` -> ``bus``), and by its suffix rules for ASCII words it does not know
  (``skateboarders`` -> ``skateboarder``); when a word has several lemmas the one that differs from the
  word and is shortest wins (``leaves`` -> ``leaf``);
- the known terms are the class names of every vocabulary preset (``ovlabel/data/vocabularies``, names
  as they are prompted: ``wall-other`` -> ``wall``, ``desk-stuff`` -> ``desk``), the synonym groups of
  ``ovlabel/data/captions/synonyms.txt`` and, when labelling, the classes of the run's vocabulary;
  the longest known term wins at each position, left to right (``teddy bear`` is not a ``bear``);
- terms of ``ovlabel/data/captions/stopwords.txt`` are dropped (OVSegmentor's non-visual entities).

When spaCy and an English pipeline (``en_core_web_sm``, ``_md``, ``_lg`` or ``_trf``) are installed they
are used, never downloaded: a known term then counts only when one of its words is tagged as a noun (an
``orange shirt`` names no orange), and nouns that are not known terms become entities too (OVSeg's
"all nouns"), lemmatised the same way.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ovlabel.errors import OvlabelError

_WORD = re.compile(r"[^\W_](?:[\w'\u2019-]*[^\W_])?", re.UNICODE)
#: English spaCy pipelines tried, in this order, when spaCy is installed.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")


def words(text: str) -> list[str]:
    """Case-folded, NFKC-normalised words of ``text`` (possessive ``'s`` dropped, curly apostrophes too)."""
    norm = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    out = []
    for w in _WORD.findall(norm):
        w = w[:-2] if w.endswith("'s") else w
        w = w.strip("'-")
        if w:
            out.append(w)
    return out


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """The noun lemma of a lower-case ``word`` (see the module docstring); the word itself if none."""
    from lemminflect import getLemma

    if "-" in word:  # lemmatise the head of a hyphenated compound: t-shirts -> t-shirt
        head, _, last = word.rpartition("-")
        return f"{head}-{lemma(last)}"
    cands = getLemma(word, upos="NOUN", lemmatize_oov=False)
    if not cands and word.isascii() and word.isalpha():
        cands = getLemma(word, upos="NOUN", lemmatize_oov=True)
    if not cands:
        return word
    differ = [c for c in cands if c != word]
    return min(differ, key=lambda c: (len(c), c)) if differ else cands[0]


def canonical(phrase: str) -> str:
    """A term's matching key: its words, each lemmatised, joined by spaces (``Chests of Drawers`` ->
    ``chest of drawer``)."""
    return " ".join(lemma(w) for w in words(phrase))


def prompt_term(name: str) -> str:
    """A class name as a caption would say it: ``_``/``-`` as spaces, a trailing ``other``/``stuff``/
    ``merged`` dropped (COCO-Stuff's ``wall-other``, ``desk-stuff``)."""
    ws = name.replace("_", " ").replace("-", " ").split()
    while len(ws) > 1 and ws[-1].lower() in ("other", "stuff", "merged"):
        ws = ws[:-1]
    return " ".join(ws)


def _data_lines(name: str) -> list[tuple[int, str]]:
    text = resources.files("ovlabel").joinpath("data", "captions", name).read_text(encoding="utf-8")
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]


@lru_cache(maxsize=1)
def synonym_groups() -> dict[str, str]:
    """``{canonical term: canonical group head}`` from ``synonyms.txt`` (heads map to themselves)."""
    out: dict[str, str] = {}
    for lineno, line in _data_lines("synonyms.txt"):
        terms = [canonical(t) for t in line.split(",") if t.strip()]
        for t in terms:
            if t in out and out[t] != terms[0]:
                raise OvlabelError(f"synonyms.txt line {lineno}: '{t}' is already in the group of '{out[t]}'")
            out[t] = terms[0]
    return out


@lru_cache(maxsize=1)
def display_names() -> dict[str, str]:
    """``{canonical term: the term as written}`` for group heads and preset class names (``chest of
    drawer`` -> ``chest of drawers``), to name entities in vocabularies."""
    from ovlabel.vocab import PRESET_VOCABULARIES, load_vocabulary

    out = {canonical(prompt_term(s)): prompt_term(s) for p in PRESET_VOCABULARIES
           for c in load_vocabulary(p).classes for s in c.synonyms}
    for _, line in _data_lines("synonyms.txt"):
        head = line.split(",")[0].strip()
        out[canonical(head)] = head
    return out


@lru_cache(maxsize=1)
def stop_terms() -> frozenset[str]:
    """Canonical terms of ``stopwords.txt``."""
    return frozenset(canonical(t) for _, t in _data_lines("stopwords.txt"))


@lru_cache(maxsize=1)
def preset_terms() -> frozenset[str]:
    """Canonical class names of every vocabulary preset."""
    from ovlabel.vocab import PRESET_VOCABULARIES, load_vocabulary

    return frozenset(canonical(prompt_term(s)) for p in PRESET_VOCABULARIES for c in load_vocabulary(p).classes
                     for s in c.synonyms)


def load_spacy():
    """An installed English spaCy pipeline, or None (spaCy missing, or no pipeline installed). Nothing is
    downloaded."""
    try:
        import spacy
    except ImportError:
        return None
    for name in SPACY_MODELS:
        try:
            if spacy.util.is_package(name):
                return spacy.load(name, disable=["ner", "textcat"])
        except Exception:  # a broken or incompatible pipeline: try the next, else parse without spaCy
            continue
    return None


@dataclass
class EntityMatcher:
    """Finds known terms in captions. ``extra``: more terms (a vocabulary's class names and synonyms);
    ``parser``: a spaCy ``nlp`` (see :func:`load_spacy`), or None for the offline default."""

    extra: tuple[str, ...] = ()
    parser: object = None

    def __post_init__(self):
        self.terms = set(preset_terms()) | set(synonym_groups()) | {canonical(prompt_term(t)) for t in self.extra}
        self.terms.discard("")
        self.max_len = max(len(t.split()) for t in self.terms)
        self.parser_name = None
        if self.parser is not None:
            meta = getattr(self.parser, "meta", {}) or {}
            self.parser_name = f"spacy:{meta.get('lang', 'en')}_{meta.get('name', '?')}-{meta.get('version', '?')}"

    def terms_of(self, caption: str) -> list[str]:
        """The canonical known terms (and, with a parser, other nouns) of ``caption`` in reading order,
        stop terms removed; a term may repeat."""
        if self.parser is None:
            toks = [(lemma(w), True) for w in words(caption)]
        else:
            toks = []
            for t in self.parser(caption):
                for w in words(t.text):
                    toks.append((lemma(w), t.pos_ in ("NOUN", "PROPN")))
        out, i = [], 0
        while i < len(toks):
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                span = toks[i : i + n]
                term = " ".join(w for w, _ in span)
                if term in self.terms and (self.parser is None or any(noun for _, noun in span)):
                    break
            else:
                n, term = 1, toks[i][0] if self.parser is not None and toks[i][1] else None
            if term and term not in stop_terms():
                out.append(term)
            i += n
        return out

    @staticmethod
    def entity(term: str) -> str:
        """The entity a term names: its synonym group's head, else itself."""
        return synonym_groups().get(term, term)
