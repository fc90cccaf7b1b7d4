"""Finding and decoding input images.

Inputs are a folder (searched recursively), a text file listing image paths, or a single image file.
Decoding applies the EXIF orientation and converts every mode PIL can open (grayscale, RGBA, palette, CMYK,
16-bit, float) to 8-bit RGB. A file that cannot be decoded raises :class:`ImageDecodeError` with a short
reason; callers record it and go on.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovlabel.errors import ImageDecodeError, OvlabelError

#: File suffixes (lower case) treated as images when searching a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageEntry:
    """One input image: its absolute ``path`` and its POSIX path ``rel`` relative to the image root."""

    path: Path
    rel: str


@dataclass(frozen=True)
class ImageSource:
    """The resolved input: ``root`` (the folder ``rel`` paths are relative to) and sorted ``entries``."""

    root: Path
    entries: tuple[ImageEntry, ...]
    kind: str  # "folder", "list" or "file"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def discover_images(inputs: str | os.PathLike, exclude: str | os.PathLike | None = None) -> ImageSource:
    """Resolve ``inputs`` (folder, list file or single image) into a sorted :class:`ImageSource`.

    Hidden files and folders (name starting with ``.``) are skipped, and so is everything under
    ``exclude`` (the run's own output folder). Raises :class:`OvlabelError` when the path does not exist
    or holds no images.
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
        entries = _walk_folder(src, excluded)
        if not entries:
            raise OvlabelError(
                f"no images found in folder '{inputs}' (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}; hidden files and folders are skipped)"
            )
        return ImageSource(root=src, entries=tuple(entries), kind="folder")
    if _is_image_name(src.name):
        return ImageSource(root=src.parent, entries=(ImageEntry(src, src.name),), kind="file")
    return _read_list_file(src, inputs)


def _walk_folder(root: Path, excluded: Path | None) -> list[ImageEntry]:
    entries = []
    seen = {root.resolve()}  # symlinked folders are followed, but each real folder once (no cycles)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            real = (here / d).resolve()
            if d.startswith(".") or real == excluded or real in seen:
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith(".") or not _is_image_name(name):
                continue
            path = here / name
            entries.append(ImageEntry(path, path.relative_to(root).as_posix()))
    entries.sort(key=lambda e: e.rel)
    return entries


def _read_list_file(list_path: Path, shown: str | os.PathLike) -> ImageSource:
    try:
        text = list_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OvlabelError(
            f"input '{shown}' is neither a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) nor a UTF-8 "
            f"text file listing image paths"
        ) from None
    paths: list[Path] = []
    seen: set[Path] = set()
    for line in text.splitlines():
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
    entries = sorted((ImageEntry(p, p.relative_to(root).as_posix()) for p in paths), key=lambda e: e.rel)
    return ImageSource(root=root, entries=tuple(entries), kind="list")


def read_file(path: Path) -> tuple[bytes, str]:
    """Read a file's bytes and their SHA-256 hex digest (the content hash runs key on).

    Raises :class:`ImageDecodeError` when the file is missing, unreadable or empty.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return data, hashlib.sha256(data).hexdigest()


def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded image bytes to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    The EXIF orientation is applied, so H and W are the displayed height and width. Transparent pixels
    are composited over white. 16-bit images are scaled to 8 bits (``v / 257``), not clipped.
    Raises :class:`ImageDecodeError` with a short reason for anything PIL cannot decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not a recognised image (corrupt, or not really a JPEG/PNG/WebP/BMP/TIFF despite its name)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # malformed EXIF must not cost the image; keep it unrotated
        pass
    try:
        return _to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"unsupported image mode {img.mode!r}: {exc}") from None


def _to_rgb(img) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy, not PIL's read-only buffer


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a single-channel integer or float image to uint8 without clipping its range away."""
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    a = arr.astype(np.float64)
    finite = a[np.isfinite(a)]
    top = float(finite.max()) if finite.size else 0.0
    if np.issubdtype(arr.dtype, np.floating) and top <= 1.0:
        a = a * 255.0
    elif top > 65535.0:
        a = a * (255.0 / top)
    elif top > 255.0:
        a = a / 257.0
    return np.clip(np.nan_to_num(np.round(a)), 0, 255).astype(np.uint8)
