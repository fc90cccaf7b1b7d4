"""Coloured label overlays with a legend, so a person can look at the labels."""

from __future__ import annotations

import colorsys

import numpy as np

from ovlabel.vocab import IGNORE_INDEX


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for class ``index`` (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    sat = 0.85 if index % 2 == 0 else 0.6
    val = 0.95 if (index // 2) % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(image: np.ndarray, label_map: np.ndarray, class_names: list[str], alpha: float = 0.55):
    """Blend class colours over an RGB uint8 ``(H, W, 3)`` image where ``label_map`` ``(H, W)`` is
    labelled, and append a legend column listing the classes present (largest area first) with their
    pixel share. Returns a PIL RGB image of width ``W + legend width``."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = label_map.shape
    present, counts = np.unique(label_map[label_map != IGNORE_INDEX], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    lut = np.zeros((256, 3), np.float32)
    for c in present:
        lut[c] = class_color(int(c))
    labelled = (label_map != IGNORE_INDEX)[..., None]
    blended = image.astype(np.float32) * (1 - alpha) + lut[label_map] * alpha
    out = np.where(labelled, blended, image.astype(np.float32)).round().astype(np.uint8)

    font_size = max(11, min(28, h // 32))
    font = ImageFont.load_default(size=font_size)
    line = font_size + 6
    rows = [(int(present[i]), f"{_name(class_names, int(present[i]))} {counts[i] / label_map.size:.0%}") for i in order]
    legend_w = max(160, 14 * font_size)
    canvas = Image.new("RGB", (w + legend_w, max(h, line * (len(rows) + 2))), (255, 255, 255))
    canvas.paste(Image.fromarray(out), (0, 0))
    _draw_legend(ImageDraw.Draw(canvas), w + 8, "classes" if rows else "no labels", rows, font, font_size)
    return canvas


def render_legend(class_names: list[str], font_size: int = 16):
    """The colour legend of a vocabulary: one row per class, ``index name`` beside its :func:`class_color`
    swatch (the colour overlays paint it with), in index order, and a last row for 255 (unlabeled, left
    unpainted). Returns a PIL RGB image; the same names give the same pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    rows = [(i, f"{i:3d}  {name}") for i, name in enumerate(class_names)]
    rows.append((None, f"{IGNORE_INDEX:3d}  unlabeled (not painted)"))
    width = 40 + font_size * 2 + int(max(font.getlength(text) for _, text in rows))
    canvas = Image.new("RGB", (max(width, 200), (font_size + 6) * (len(rows) + 1) + 8), (255, 255, 255))
    _draw_legend(ImageDraw.Draw(canvas), 8, "class colours", rows, font, font_size)
    return canvas


def _name(class_names: list[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else f"class {c}"


def _draw_legend(draw, x0: int, title: str, rows, font, font_size: int) -> None:
    """Draw ``title`` and one row per ``(class index or None, text)``: a swatch of the class colour (white
    for None) and the text, starting at ``x0``, 4 px from the top."""
    line = font_size + 6
    draw.text((x0, 4), title, fill=(0, 0, 0), font=font)
    for k, (c, text) in enumerate(rows, start=1):
        y = 4 + k * line
        fill = (255, 255, 255) if c is None else class_color(c)
        draw.rectangle([x0, y + 2, x0 + font_size, y + 2 + font_size], fill=fill, outline=(0, 0, 0))
        draw.text((x0 + font_size + 6, y), text, fill=(0, 0, 0), font=font)
