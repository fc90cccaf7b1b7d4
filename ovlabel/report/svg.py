"""Plain SVG charts written into the report (no plotting library, no script): a histogram, horizontal bars
and a scatter plot. Every function returns an ``<svg>`` element as a string; text is escaped."""

from __future__ import annotations

from html import escape

import numpy as np

FONT = "font-family='system-ui, sans-serif' font-size='11'"


def _num(v: float) -> str:
    return f"{v:.1f}"


def histogram(values, bins: int = 20, lo: float = 0.0, hi: float = 1.0, width: int = 520, height: int = 180,
              xlabel: str = "", color: str = "#4a78c2") -> str:
    """Counts of ``values`` in ``bins`` equal bins over ``[lo, hi]`` as bars, with the axis labelled at
    both ends and in the middle; NaN values are left out."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    left, bottom, top = 36, height - 30, 10
    plot_w, plot_h = width - left - 10, bottom - top
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    bw = plot_w / bins
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='{escape(xlabel)} histogram' {FONT}>",
             f"<line x1='{left}' y1='{bottom}' x2='{left + plot_w}' y2='{bottom}' stroke='#333'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='#333'/>",
             f"<text x='{left - 4}' y='{top + 8}' text-anchor='end'>{peak}</text>",
             f"<text x='{left - 4}' y='{bottom}' text-anchor='end'>0</text>"]
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        x = left + i * bw
        parts.append(f"<rect x='{_num(x + 1)}' y='{_num(bottom - h)}' width='{_num(bw - 2)}' height='{_num(h)}' "
                     f"fill='{color}'><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: {int(c)}</title></rect>")
    for frac in (0.0, 0.5, 1.0):
        x = left + frac * plot_w
        parts.append(f"<text x='{_num(x)}' y='{bottom + 14}' text-anchor='middle'>{lo + frac * (hi - lo):g}</text>")
    parts.append(f"<text x='{left + plot_w / 2:.1f}' y='{height - 3}' text-anchor='middle'>{escape(xlabel)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bars(labels: list[str], values, width: int = 520, row: int = 16, color: str = "#4a78c2",
         fmt: str = "{:,.0f}", colors: list[str] | None = None) -> str:
    """Horizontal bars, one row per label, longest = full width; value printed after each bar."""
    vals = np.asarray(values, np.float64)
    peak = float(vals.max()) if len(vals) and vals.max() > 0 else 1.0
    label_w = min(200, 8 + 7 * max((len(t) for t in labels), default=4))
    plot_w = width - label_w - 70
    height = row * len(labels) + 4
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT}>"]
    for i, (t, v) in enumerate(zip(labels, vals)):
        y = 2 + i * row
        w = plot_w * v / peak
        fill = colors[i] if colors else color
        parts.append(f"<text x='{label_w - 6}' y='{y + row - 4}' text-anchor='end'>{escape(t[:28])}</text>"
                     f"<rect x='{label_w}' y='{y + 2}' width='{_num(max(w, 0.5))}' height='{row - 4}' fill='{fill}'>"
                     f"<title>{escape(t)}: {fmt.format(v)}</title></rect>"
                     f"<text x='{_num(label_w + w + 4)}' y='{y + row - 4}'>{fmt.format(v)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def scatter(xs, ys, width: int = 320, height: int = 240, xlabel: str = "", ylabel: str = "",
            color: str = "#c2504a") -> str:
    """Points ``(x, y)`` in the unit square with labelled axes (pairs with a None are left out)."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
    left, bottom, top, right = 40, height - 34, 10, width - 10
    pw, ph = right - left, bottom - top
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT}>",
             f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#333'/>"]
    for x, y in pts:
        cx, cy = left + pw * min(max(x, 0), 1), bottom - ph * min(max(y, 0), 1)
        parts.append(f"<circle cx='{_num(cx)}' cy='{_num(cy)}' r='3' fill='{color}' fill-opacity='0.6'/>")
    parts += [f"<text x='{left}' y='{bottom + 14}' text-anchor='middle'>0</text>",
              f"<text x='{right}' y='{bottom + 14}' text-anchor='middle'>1</text>",
              f"<text x='{left - 4}' y='{top + 8}' text-anchor='end'>1</text>",
              f"<text x='{(left + right) / 2:.1f}' y='{height - 4}' text-anchor='middle'>{escape(xlabel)}</text>",
              f"<text x='12' y='{(top + bottom) / 2:.1f}' text-anchor='middle' "
              f"transform='rotate(-90 12 {(top + bottom) / 2:.1f})'>{escape(ylabel)}</text>", "</svg>"]
    return "".join(parts)
