"""``export`` configuration: which labels of a run go out, and how (torch-free, validated)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovlabel.config._fields import knob
from ovlabel.errors import OvlabelError

#: Export formats, in the order ``ovlabel export --help`` lists them (one module each in ovlabel.export).
FORMATS = ("yolo-seg", "voc", "mmseg", "hf", "fiftyone", "labelstudio")

#: ``--images``: copy the files, symlink them, or write no image files (labels only / paths to the originals).
IMAGE_MODES = ("copy", "link", "none")


def _bad(option: str, value, accepted: str) -> OvlabelError:
    return OvlabelError(f"{option} {value!r} is invalid: expected {accepted}")


@dataclass(frozen=True)
class ExportConfig:
    """How ``ovlabel export`` turns a run into datasets. Every field is a CLI option of the same name.

    - ``split``: fraction of images in ``train``; the rest is ``val``. An image's split depends only on its
      content hash and ``seed`` (:func:`ovlabel.export.core.split_of`), so it keeps its split when the
      dataset grows and identical files share one split. ``1.0`` puts every image in ``train``.
    - ``seed``: seed of that split.
    - ``images``: ``copy`` the image files into the export (their SHA-256 is checked against the
      manifest), ``link`` them (absolute symlinks to the originals), or ``none`` (no image files; formats
      that can hold a path point at the originals).
    - ``image_root``: where the run's images are now, when they moved since the run (default: the input
      folder recorded in run.json).
    - ``min_score``: drop masks whose score is below this; in semantic outputs a pixel keeps its class only
      where a kept mask of that class covers it (else 255, unlabeled). None keeps everything.
    - ``classes``: export only these classes (run class names), in this order; the others become
      unlabeled and their masks are dropped. Empty: every class, in vocabulary order.
    - ``rename``: ``(old, new)`` pairs applied after ``classes``; two classes renamed to one name merge.
    - ``url_prefix``: Label Studio ``data.image`` prefix (``/data/local-files/?d=`` serves files relative
      to ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``).
    - ``hf_shard_images``: images per Parquet shard of the ``hf`` export (the unit an interrupted export
      resumes from).
    - ``overwrite``: replace an existing export made with other settings or from another run state.
    """

    split: float = knob(0.9, help="Fraction of images in train (the rest: val), by content hash.")
    seed: int = knob(0, help="Seed of the train/val split.")
    images: str = knob("copy", help="Image files: copy | link | none (none: labels only).")
    image_root: Path | None = knob(None, help="Where the run's images are now, if they moved.", parse=Path,
                                   shown="the run's input folder")
    min_score: float | None = knob(None, help="Drop masks scored below this (0-1).", shown="keep all")
    classes: tuple[str, ...] = knob((), help="Export only these run classes, in this order (comma list); others "
                                    "become unlabeled.", parse=lambda v: parse_classes(v), shown="all")
    rename: tuple[tuple[str, str], ...] = knob((), help="Rename classes: 'old=new,...'; two classes renamed alike "
                                               "merge.", parse=lambda v: parse_rename(v), shown="none")
    url_prefix: str = knob("/data/local-files/?d=", help="Label Studio image URL prefix.")
    hf_shard_images: int = knob(1000, help="Images per Parquet shard of the hf export.")
    overwrite: bool = knob(False, help="Replace an export made with other settings or from another run state.",
                           flag="--overwrite")

    def __post_init__(self):
        if not (isinstance(self.split, (int, float)) and 0 < self.split <= 1):
            raise _bad("--split", self.split, "a fraction of images for train in (0, 1], e.g. 0.9")
        if self.images not in IMAGE_MODES:
            raise _bad("--images", self.images, " | ".join(IMAGE_MODES))
        if self.min_score is not None and not (0 <= self.min_score <= 1):
            raise _bad("--min-score", self.min_score, "a score in [0, 1] (masks below it are dropped)")
        if self.hf_shard_images < 1:
            raise _bad("--hf-shard-images", self.hf_shard_images, "an integer >= 1")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise _bad("--classes", ",".join(self.classes), f"each class once (repeated: {', '.join(dup)})")
        olds = [o for o, _ in self.rename]
        if len(set(olds)) != len(olds) or any(not o or not n for o, n in self.rename):
            raise _bad("--rename", ",".join(f"{o}={n}" for o, n in self.rename),
                       "OLD=NEW pairs, each OLD once, both names non-empty")

    def result_params(self) -> dict:
        """The fields that change an export's bytes (what resuming keys on)."""
        return {"split": float(self.split), "seed": int(self.seed), "images": self.images,
                "min_score": self.min_score, "classes": list(self.classes), "rename": [list(p) for p in self.rename],
                "url_prefix": self.url_prefix, "hf_shard_images": int(self.hf_shard_images)}


def parse_formats(values) -> tuple[str, ...]:
    """``--format`` values (each may be a comma list) into distinct known formats, in the order given."""
    out: list[str] = []
    for v in values or ():
        for f in str(v).split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f not in FORMATS:
                raise _bad("--format", f, " | ".join(FORMATS) + " (several: repeat --format or give a comma list)")
            if f not in out:
                out.append(f)
    if not out:
        raise OvlabelError(f"--format is required: one or more of {', '.join(FORMATS)}")
    return tuple(out)


def parse_classes(value: str | None) -> tuple[str, ...]:
    """``--classes "a,b"`` into a tuple of names (blank items dropped)."""
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


def parse_rename(value: str | None) -> tuple[tuple[str, str], ...]:
    """``--rename "old=new,b=c"`` into pairs; OvlabelError naming an item without ``=``."""
    pairs = []
    for item in (value or "").split(","):
        if not item.strip():
            continue
        old, eq, new = item.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise _bad("--rename", item.strip(), "OLD=NEW pairs separated by commas, e.g. 'car=vehicle,truck=vehicle'")
        pairs.append((old.strip(), new.strip()))
    return tuple(pairs)
