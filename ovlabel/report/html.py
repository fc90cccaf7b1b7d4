"""The report page: one self-contained HTML file (inline CSS, inline SVG, images as data URIs or relative
links to the run's overlays; no script, no server, no network). Every value from the run is escaped."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

import numpy as np

from ovlabel.overlays import class_color
from ovlabel.report import svg

CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:1.5em;margin:18px 0 4px} h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff4d6;border:1px solid #e8c766;padding:6px 10px;margin:8px 0}
.muted{color:#666;font-size:12px} .sw{display:inline-block;width:10px;height:10px;margin-right:4px;border:1px solid #555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:14px}
.card{border:1px solid #ddd;border-radius:4px;padding:8px;font-size:12px}
.card img{width:100%;height:auto;display:block;background:#eee}
.card table{font-size:11px;width:100%} .q{font-weight:bold}
.lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:9;align-items:center;
justify-content:center;flex-direction:column} .lightbox:target{display:flex}
.lightbox img{max-width:95vw;max-height:88vh} .lightbox a{color:#fff;margin:8px}
.flex{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
"""


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (escape values before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def provenance(doc: dict) -> str:
    settings = doc.get("settings") or {}
    vocab = settings.get("vocabulary") or {}
    models = doc.get("models") or {}
    counts = doc.get("counts") or {}
    rows = [
        ["command", escape(str(doc.get("command", "?")))],
        ["ovlabel version", escape(str(doc.get("ovlabel_version", "?")))],
        ["created / updated", escape(f"{doc.get('created', '?')} / {doc.get('updated', '?')}")],
        ["input", escape(str((doc.get("input") or {}).get("path", "?")))],
        ["stages", escape(", ".join(settings.get("stages") or []))],
        ["vocabulary", escape(f"{vocab.get('source', '?')} ({len(vocab.get('classes') or [])} classes)")],
        ["templates", escape(str((settings.get("templates") or {}).get("name", "?")))],
        ["settings key", escape(str(doc.get("settings_key", "?")))],
    ]
    for family, m in sorted(models.items()):
        if isinstance(m, dict):
            desc = m.get("spec", "?") + (f", sha256 {str(m['sha256'])[:12]}" if m.get("sha256") else "")
            desc += ", random weights" if m.get("random_init") else ""
        else:
            desc = str(m)
        rows.append([f"model: {escape(family)}", escape(desc)])
    if doc.get("parent"):
        rows.append(["parent run", escape(str(doc["parent"].get("path", doc["parent"])))])
    if counts:
        skipped = f", {counts['skipped']} skipped" if counts.get("skipped") else ""
        rows.append(["images", escape(f"{counts.get('images', '?')} ({counts.get('labelled', '?')} labelled, "
                                      f"{counts.get('failed', '?')} failed{skipped}), {counts.get('masks', '?')} masks")])
    out = _table(["", ""], rows)
    if doc.get("note"):
        out = f"<div class='note'>{escape(doc['note'])}</div>" + out
    return out


def classes_section(data) -> str:
    k = len(data.classes)
    total = int(data.class_pixels.sum()) or 1
    summary = ((data.doc.get("quality") or {}).get("classes")) or {}
    order = [c for c in np.argsort(-data.class_pixels[:k], kind="stable") if data.class_pixels[c] or data.class_masks[c]]
    rows = []
    for c in order:
        name = data.classes[c]
        q = (summary.get(name) or {}).get("mean_quality")
        rows.append([f"<span class='sw' style='background:rgb{class_color(int(c))}'></span>{escape(name)}",
                     f"{int(data.class_pixels[c]):,}", f"{100 * data.class_pixels[c] / total:.2f}%",
                     f"{int(data.class_masks[c]):,}", _f(q)])
    rows.append(["<i>unlabeled</i>", f"{int(data.class_pixels[k]):,}", f"{100 * data.class_pixels[k] / total:.2f}%",
                 "", ""])
    top = order[:30]
    chart = svg.bars([data.classes[c] for c in top], [data.class_pixels[c] for c in top],
                     colors=[f"rgb{class_color(int(c))}" for c in top])
    table = _table(["class", "pixels", "share", "masks", "mean mask quality"], rows, {1, 2, 3, 4})
    return (f"<p class='muted'>{len(order)} of {k} vocabulary classes appear. Pixels are counted in the label maps "
            f"(what a trainer sees), masks in masks.parquet (overlapping masks each count).</p>"
            f"<div class='flex'><div>{table}</div><div>{chart}</div></div>")


def quality_section(data, shown: int) -> str:
    ok = data.ok
    q = [r.get("quality") for r in ok]
    known = np.array([v for v in q if v is not None], np.float64)
    info = data.doc.get("quality") or {}
    weights = info.get("weights")
    if not weights:
        from ovlabel.quality import WEIGHTS

        weights = WEIGHTS
    origin = {"recomputed": "computed now from masks.parquet: the run predates the quality columns",
              "manifest": "as the run stored it in manifest.parquet"}.get(data.quality_origin, data.quality_origin)
    lines = [f"estimate available for {len(known)} of {len(ok)} labelled images ({escape(origin)})"]
    if len(known):
        p10, p50, p90 = np.percentile(known, [10, 50, 90])
        lines.append(f"mean {known.mean():.3f}, 10th percentile {p10:.3f}, median {p50:.3f}, 90th percentile {p90:.3f}")
    lines.append("weights: " + ", ".join(f"{escape(k)} {v:g}" for k, v in weights.items()))
    hist = svg.histogram(known, xlabel="estimated quality per image (1 = looks best)")
    per_class = (info.get("classes") or {})
    items = sorted(((v["mean_quality"], k) for k, v in per_class.items() if v.get("mean_quality") is not None))[:20]
    chart = ""
    if items:
        chart = ("<div><p class='muted'>least certain classes (mean mask quality, area-weighted)</p>"
                 + svg.bars([k for _, k in items], [v for v, _ in items], fmt="{:.3f}", color="#c2504a") + "</div>")
    return (f"<p>{'<br>'.join(lines)}</p><div class='flex'><div>{hist}</div>{chart}</div>"
            f"<p class='muted'>The estimate ranks images for review; it is not a measured accuracy. What it is built "
            f"from and how far it can be trusted: docs/quality.md (ovlabel.quality). The grid below shows the "
            f"{shown} least certain images.</p>")


def card(row: dict, masks: list[dict], thumb: str, full_href: str, has_source: bool, max_masks: int = 12) -> str:
    sig = " · ".join(f"{k} {_f(row.get(k), 2)}" for k in ("margin", "pred_iou", "stability", "agreement")
                     if row.get(k) is not None)
    mrows = [[escape(m["category"] or "?"), escape(str(m["source"])), _f(m["score"], 2), _f(m.get("quality"), 2),
              f"{int(m['area']):,}"] for m in masks[:max_masks]]
    more = f"<p class='muted'>… and {len(masks) - max_masks} more masks</p>" if len(masks) > max_masks else ""
    note = "" if has_source else "<p class='muted'>source image unavailable: label colours only</p>"
    return (f"<div class='card'><a href='{full_href}'><img src='{thumb}' alt='{escape(row['file'])}' "
            f"loading='lazy'></a><div><span class='q'>quality {_f(row.get('quality'))}</span> · "
            f"{escape(row['file'])}</div><div class='muted'>{sig}; unlabeled {_f(row.get('unlabeled_fraction'), 2)}"
            f"</div>{note}"
            + _table(["class", "source", "score", "quality", "area"], mrows, {2, 3, 4}) + more + "</div>")


def lightbox(anchor: str, uri: str, title: str) -> str:
    return (f"<div class='lightbox' id='{anchor}'><a href='#grid'>close ✕</a>"
            f"<img src='{uri}' alt='{escape(title)}'><a href='#grid'>{escape(title)}</a></div>")


def drift_section(report) -> str:
    d = report
    head = (f"<p>against <code>{escape(d.run_b)}</code>: drift <b>{d.drift:.4f}</b> (1 - pixel agreement over "
            f"{d.images_same_input} images with identical input), mean image IoU {_f(d.mean_image_iou)}, mean class "
            f"IoU {_f(d.mean_class_iou)}; {d.images_label_changed} images have changed labels, {len(d.added)} added, "
            f"{len(d.removed)} removed, {len(d.input_changed)} with changed input.</p>")
    worst = [[escape(x.file), _f(x.agreement, 4), _f(x.iou)] for x in d.most_changed(15)]
    classes = [[escape(c["name"]), _f(c["iou"]), f"{c['pixels_a']:,}", f"{c['pixels_b']:,}"] for c in d.worst_classes(15)]
    out = head
    if worst:
        out += "<h3>most changed images</h3>" + _table(["image", "pixel agreement", "IoU"], worst, {1, 2})
    if classes:
        out += "<h3>classes with the lowest IoU between the runs</h3>" + _table(
            ["class", "IoU", "pixels (this run)", "pixels (other)"], classes, {1, 2, 3})
    return out


def eval_section(docs: dict[str, dict], per_image: list[tuple[float, float]] | None, rho: float | None) -> str:
    out = []
    for name, doc in docs.items():
        s = doc.get("summary") or {}
        gt = doc.get("ground_truth") or {}
        proto = (doc.get("protocol") or {}).get("name", "none")
        out.append(f"<h3>{escape(name)}</h3><p>ground truth: {escape(str(gt.get('description', '?')))}; protocol "
                   f"{escape(str(proto))}; images scored {escape(str((doc.get('images') or {}).get('evaluated', '?')))}"
                   f"</p><p><b>mIoU {_f(s.get('mIoU'), 2)}</b> · mAcc {_f(s.get('mAcc'), 2)} · aAcc "
                   f"{_f(s.get('aAcc'), 2)} (percent)</p>")
        pcs = [c for c in doc.get("per_class") or [] if c.get("IoU") is not None]
        pcs.sort(key=lambda c: c["IoU"])
        if pcs:
            rows = [[escape(c["class"]), _f(c["IoU"], 2), f"{c['label_area']:,}", f"{c['pred_area']:,}"] for c in pcs[:20]]
            out.append("<details><summary>lowest per-class IoU</summary>"
                       + _table(["class", "IoU %", "GT pixels", "predicted pixels"], rows, {1, 2, 3}) + "</details>")
    if per_image:
        xs, ys = zip(*per_image)
        out.append(f"<h3>estimate against the true per-image mIoU</h3><p>Spearman rank correlation "
                   f"<b>{_f(rho)}</b> over {len(per_image)} images (the ranking the review grid relies on).</p>"
                   + svg.scatter(xs, ys, xlabel="estimated quality", ylabel="true image mIoU"))
    return "".join(out)


def page(title: str, sections: list[tuple[str, str, str]], extra: str = "") -> str:
    """``sections``: (anchor, heading, html)."""
    nav = " · ".join(f"<a href='#{a}'>{escape(h)}</a>" for a, h, _ in sections)
    body = "".join(f"<h2 id='{a}'>{escape(h)}</h2>{html}" for a, h, html in sections)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><p class='muted'>{nav}</p>{body}{extra}"
            "</body></html>\n")


def href(path: str) -> str:
    return quote(path, safe="/")

