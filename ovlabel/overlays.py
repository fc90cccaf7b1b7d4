"""Coloured label overlays with a legend, so a person can look at the labels."""

from __future__ import annotations

import colorsys

import numpy as np

from ovlabel.artifacts import IGNORE_INDEX


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
    rows = [(int(present[i]), counts[i] / label_map.size) for i in order]
    legend_w = max(160, 14 * font_size)
    canvas = Image.new("RGB", (w + legend_w, max(h, line * (len(rows) + 2))), (255, 255, 255))
    canvas.paste(Image.fromarray(out), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = w + 8
    draw.text((x0, 4), "classes" if rows else "no labels", fill=(0, 0, 0), font=font)
    for k, (c, share) in enumerate(rows, start=1):
        y = 4 + k * line
        draw.rectangle([x0, y + 2, x0 + font_size, y + 2 + font_size], fill=class_color(c), outline=(0, 0, 0))
        name = class_names[c] if c < len(class_names) else f"class {c}"
        draw.text((x0 + font_size + 6, y), f"{name} {share:.0%}", fill=(0, 0, 0), font=font)
    return canvas
