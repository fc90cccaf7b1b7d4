"""Finding input images: a folder (searched recursively), a text file listing image paths, or one image.

Nothing in the input is passed over silently. Every file with an image suffix becomes an entry, and so
does every folder that cannot be searched and every entry that is not a regular file (a FIFO or device
named ``x.jpg``, a broken link): those carry the reason they fail, so the run records them in its
manifest. What the search leaves out by rule (hidden names, files of other types) is counted in
:attr:`ImageSource.not_searched`, which the run prints and records. Paths are stored in the reversible
UTF-8 form of :mod:`ovlabel.io.names` (file names that are not UTF-8 survive).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ovlabel.errors import OvlabelError
from ovlabel.io.names import stored_name

#: File suffixes (lower case) treated as images when searching a folder (animated GIF, PNG and WebP are
#: found and recorded as skipped: ovlabel labels still images).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Suffixes of a text file listing image paths ("" = none).
LIST_SUFFIXES = ("", ".txt", ".lst", ".list")


@dataclass(frozen=True)
class ImageEntry:
    """One input: its absolute ``path`` (as the OS names it), its POSIX path ``rel`` relative to the image
    root in stored form (:func:`ovlabel.io.names.stored_name`; a folder's ends in ``/``), and for an entry
    that cannot be an image, the ``reason`` and the manifest ``status`` it gets (``failed`` or ``skipped``)."""

    path: Path
    rel: str
    reason: str | None = None
    status: str = "failed"


@dataclass(frozen=True)
class ImageSource:
    """The resolved input: ``root`` (the folder ``rel`` paths are relative to), sorted ``entries``, and what
    the search left out by rule: ``not_searched`` counts (``hidden``: names starting with ``.``;
    ``other files``: files without an image suffix)."""

    root: Path
    entries: tuple[ImageEntry, ...]
    kind: str  # "folder", "list" or "file"
    not_searched: dict = field(default_factory=dict)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def discover_images(inputs: str | os.PathLike, exclude: str | os.PathLike | None = None) -> ImageSource:
    """Resolve ``inputs`` (folder, list file or single image) into a sorted :class:`ImageSource`.

    Hidden files and folders (name starting with ``.``) are left out, and so is everything under
    ``exclude`` (the run's own output folder). Raises :class:`OvlabelError` when the path does not exist,
    cannot be read, or holds no images.
    """
    src = Path(inputs).expanduser()
    if not src.exists():
        raise OvlabelError(
            f"input path '{inputs}' does not exist; give a folder of images, a text file listing image "
            f"paths (one per line), or a single image file"
        )
    src = src.resolve()
    excluded = Path(exclude).resolve() if exclude is not None else None
    if src.is_dir():
        entries, skipped = _walk_folder(src, excluded)
        if not entries:
            raise OvlabelError(
                f"no images found in folder '{inputs}' (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}; hidden files and folders are skipped"
                f"{_counted(skipped)})"
            )
        return ImageSource(root=src, entries=tuple(entries), kind="folder", not_searched=dict(skipped))
    if _is_image_name(src.name):
        return ImageSource(root=src.parent, entries=(_entry(src, stored_name(src.name)),), kind="file")
    return _read_list_file(src, inputs)


def _counted(skipped: Counter) -> str:
    return "".join(f"; {n} {what} left out" for what, n in sorted(skipped.items()))


def _entry(path: Path, rel: str) -> ImageEntry:
    """An entry for ``path``, with the reason it cannot be an image when it is not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ImageEntry(path, rel, "broken symbolic link" if path.is_symlink() else "file not found")
    except OSError as exc:
        return ImageEntry(path, rel, f"cannot be read: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return ImageEntry(path, rel, "is a folder, not an image file", "skipped")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        return ImageEntry(path, rel, f"is {kind}, not a regular file", "skipped")
    return ImageEntry(path, rel)


def _walk_folder(root: Path, excluded: Path | None) -> tuple[list[ImageEntry], Counter]:
    """Every image-named file under ``root``; a sub-folder that cannot be listed becomes a failed entry
    (``rel`` ending in ``/``). Returns the entries (sorted by ``rel``) and the counts left out by rule."""
    entries, skipped = [], Counter()

    def unreadable(exc: OSError) -> None:
        folder = Path(exc.filename)
        if folder == root:
            raise OvlabelError(f"input folder '{root}' cannot be read: {exc.strerror or exc}")
        rel = stored_name(folder.relative_to(root).as_posix()) + "/"
        entries.append(ImageEntry(folder, rel, f"folder cannot be read ({exc.strerror or exc}): its images "
                                               f"were not searched"))

    seen = {root.resolve()}  # symlinked folders are followed, but each real folder once (no cycles)
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            real = (here / d).resolve()
            if d.startswith("."):
                skipped["hidden"] += 1
            elif real != excluded and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                skipped["hidden"] += 1
            elif not _is_image_name(name):
                skipped["other files"] += 1
            else:
                path = here / name
                entries.append(_entry(path, stored_name(path.relative_to(root).as_posix())))
    entries.sort(key=lambda e: e.rel)
    return entries, skipped


def _read_list_file(list_path: Path, shown: str | os.PathLike) -> ImageSource:
    from ovlabel.io.text import read_user_text

    try:
        text = read_user_text(list_path, "image list file")
    except OvlabelError as exc:
        if list_path.suffix.lower() in LIST_SUFFIXES:
            raise
        raise OvlabelError(
            f"input '{shown}' is neither a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) nor a UTF-8 "
            f"text file listing image paths ({', '.join(LIST_SUFFIXES[1:])} or no suffix)"
        ) from exc
    paths: list[Path] = []
    seen: set[Path] = set()
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = (p if p.is_absolute() else list_path.parent / p).resolve()
        if p not in seen:
            seen.add(p)
            paths.append(p)
    if not paths:
        raise OvlabelError(f"list file '{shown}' names no image paths (blank lines and # comments are ignored)")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    entries = sorted((_entry(p, stored_name(p.relative_to(root).as_posix())) for p in paths), key=lambda e: e.rel)
    return ImageSource(root=root, entries=tuple(entries), kind="list")
