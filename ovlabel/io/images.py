"""Reading and decoding input images (finding them: :mod:`ovlabel.io.discover`).

Decoding applies the EXIF orientation and converts every mode PIL can open (grayscale, RGBA, palette, CMYK,
16-bit, float) to 8-bit RGB. A file that cannot be decoded raises :class:`ImageDecodeError` with a short
reason; callers record it and go on. What ovlabel does not label by rule (an animated GIF, PNG or WebP;
more pixels than the run's ``max_pixels``) raises :class:`ImageSkipped`, found from the file's header
alone (:func:`probe_image`): a 144-megapixel image is skipped without decoding it. ovlabel applies its own
pixel limit in place of PIL's decompression-bomb warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np

from ovlabel.errors import ImageDecodeError, ImageSkipped
from ovlabel.io.discover import IMAGE_EXTENSIONS, ImageEntry, ImageSource, discover_images  # noqa: F401
from ovlabel.io.limits import DEFAULT_MAX_PIXELS

#: Formats whose animated files ovlabel skips (still images only; a multi-page TIFF or an MPO photo is
#: labelled from its first frame).
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")

#: Files larger than this are hashed as a stream and probed from disk, not read into memory first.
_STREAM_BYTES = 64 << 20

_PIL_LIMIT = threading.Lock()


def read_file(path: Path) -> tuple[bytes, str]:
    """Read a file's bytes and their SHA-256 hex digest (the content hash runs key on).

    Raises :class:`ImageDecodeError` when the file is missing, unreadable or empty.
    """
    with _reading():
        data = path.read_bytes()
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return data, hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _reading():
    """Turn the OSError of reading an input file into an :class:`ImageDecodeError` with a short reason."""
    try:
        yield
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None


def read_input(path: Path) -> tuple[bytes | None, str]:
    """:func:`read_file` for the engine's scan: a file larger than 64 MiB is hashed as a stream and its
    bytes are not kept (None: read them with :func:`read_file` if the image is to be decoded), so that a
    huge image that is skipped never sits in memory."""
    with _reading():
        size = os.stat(path).st_size
    if size <= _STREAM_BYTES:
        return read_file(path)
    h = hashlib.sha256()
    with _reading(), open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return None, h.hexdigest()


def _raise_pil_limit(max_pixels: int | None) -> None:
    """Let PIL decode what ovlabel's own limit allows (PIL warns above ``MAX_IMAGE_PIXELS`` and refuses
    above twice that): raised, never lowered, once per process and limit."""
    from PIL import Image

    with _PIL_LIMIT:
        if Image.MAX_IMAGE_PIXELS is not None and (max_pixels is None or Image.MAX_IMAGE_PIXELS < max_pixels):
            Image.MAX_IMAGE_PIXELS = max_pixels


def probe_image(source: bytes | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an encoded image (bytes or a file) from its header alone, without decoding
    its pixels. Raises :class:`ImageSkipped` for an animated GIF/PNG/WebP or more than ``max_pixels``
    pixels (None: no limit), :class:`ImageDecodeError` for a file PIL does not recognise."""
    from PIL import Image, UnidentifiedImageError

    with _PIL_LIMIT:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size first; the limit is ours
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                (w, h), fmt = img.size, img.format
                frames = getattr(img, "n_frames", 1) if fmt in ANIMATED_FORMATS and getattr(img, "is_animated", False) else 1
        except UnidentifiedImageError:
            raise ImageDecodeError(_UNRECOGNISED) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    if frames > 1:
        raise ImageSkipped(f"animated {'APNG' if fmt == 'PNG' else fmt} ({frames} frames): ovlabel labels still "
                           f"images; extract the frame to label (e.g. ffmpeg -i IN -frames:v 1 OUT.png)")
    too_large = pixel_limit_reason(w, h, max_pixels)
    if too_large:
        raise ImageSkipped(too_large)
    return w, h


def pixel_limit_reason(width: int, height: int, max_pixels: int | None) -> str | None:
    """Why a ``width`` x ``height`` image is skipped under the pixel limit ``max_pixels``, or None."""
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (f"{width}x{height} = {width * height / 1e6:.1f} megapixels is above --max-pixels {max_pixels} "
            f"({max_pixels / 1e6:g} MP; its decoded RGB alone is {width * height * 3 / 2**20:.0f} MiB): not decoded; "
            f"raise --max-pixels to label it")


_UNRECOGNISED = "not a recognised image (corrupt, or not really a JPEG/PNG/WebP/BMP/TIFF/GIF despite its name)"


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    The EXIF orientation is applied, so H and W are the displayed height and width. Transparent pixels
    are composited over white. 16-bit images are scaled to 8 bits (``v / 257``), not clipped.
    Raises :class:`ImageSkipped` for what :func:`probe_image` skips (checked before decoding) and
    :class:`ImageDecodeError` with a short reason for anything PIL cannot decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    probe_image(data, max_pixels)
    _raise_pil_limit(max_pixels)  # no DecompressionBombWarning for what our own limit let through
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(_UNRECOGNISED) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
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
