"""``eval``'s outputs: a table for the terminal, a JSON report and a Markdown report (written atomically).

Percentages are ``100 x`` the fractions of :class:`ovlabel.evaluate.metrics.Scores`; the terminal table
rounds to two decimals as mmsegmentation prints them, the JSON keeps full precision. NaN (a class absent
from both prediction and ground truth) is ``null`` in JSON and ``nan`` in the tables.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ovlabel.io.atomic import write_json, write_text

OTHER = "(other)"
#: Above this many classes the Markdown confusion matrix is folded in a <details> block.
MD_MATRIX_FOLD = 30


def default_report_path(pred, gt, protocol) -> Path:
    """``RUN/eval/<name>.json`` for a run, ``<folder>-eval/<name>.json`` next to a PNG folder; ``name`` is
    the protocol, else ``<layout>-<split>``, else ``<gt folder name>``."""
    name = protocol.name if protocol else (f"{gt.layout}-{gt.split}" if gt.split else f"folder-{gt.root.name}")
    if pred.kind == "run":
        from ovlabel.artifacts import RunLayout

        return RunLayout(pred.root).evals / f"{name}.json"
    return pred.root.parent / f"{pred.root.name}-eval" / f"{name}.json"


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else 100.0 * x


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100.0 * x:.2f}"


def report_dict(r) -> dict:
    from ovlabel import __version__

    s = r.scores
    names = list(r.gt_classes.names)
    per_class = [
        {"class": n, "IoU": _pct(s.iou[i]), "Acc": _pct(s.acc[i]), "intersection": int(s.intersect[i]),
         "union": int(s.union[i]), "pred_area": int(s.pred_area[i]), "label_area": int(s.label_area[i])}
        for i, n in enumerate(names)
    ]
    pred_names = r.pred.classes.names if r.pred.classes is not None else names
    return {
        "ovlabel_version": __version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "metric": "mmsegmentation IoUMetric semantics: intersections and unions summed over the dataset, "
                  "ignore_index 255, NaN (null) for classes absent from prediction and ground truth, means over "
                  "the other classes; values in percent",
        "summary": {"aAcc": _pct(s.aacc), "mIoU": _pct(s.miou), "mAcc": _pct(s.macc),
                    "classes_scored": int((~np.isnan(s.iou)).sum()), "classes": len(names)},
        "prediction": {"path": str(r.pred.root), "kind": r.pred.kind,
                       "classes": r.pred.classes.source if r.pred.classes is not None else "ground-truth indices"},
        "ground_truth": {"path": str(r.gt.root), "layout": r.gt.layout, "split": r.gt.split,
                         "description": r.gt.description, "classes": r.gt_classes.source,
                         "reduce_zero_label": r.reduce_zero_label},
        "protocol": r.protocol,
        "settings": {"ignore_index": 255, "unlabeled_as": r.unlabeled_as, "resize_pred": r.cfg.resize_pred,
                     "allow_missing": r.cfg.allow_missing},
        "images": {"evaluated": r.evaluated, "missing_prediction": r.missing, "prediction_without_gt": len(r.extra),
                   "predictions_resized": r.resized},
        "class_matching": {
            "identity": r.match.identity,
            "pred_to_gt": {pred_names[i]: (names[g] if g is not None else None) for i, g in enumerate(r.match.pred_to_gt)},
            "unmatched_pred": list(r.match.unmatched_pred), "unmatched_gt": list(r.match.unmatched_gt),
        },
        "gt_pixels_outside_classes": int(r.confusion[-1].sum()),
        "per_class": per_class,
        "confusion_matrix": {
            "rows": "ground-truth class (last row: ground-truth values outside the class list)",
            "columns": "predicted class (last column: unlabeled or unmatched predictions)",
            "labels": names + [OTHER],
            "counts": r.confusion.tolist(),
        },
    }


def text_table(r) -> str:
    s = r.scores
    names = list(r.gt_classes.names)
    width = max(12, *(len(n) for n in names))
    lines = [f"per-class results ({r.evaluated} images):", f"{'Class':{width}}  {'IoU':>7}  {'Acc':>7}"]
    lines += [f"{n:{width}}  {_fmt(s.iou[i]):>7}  {_fmt(s.acc[i]):>7}" for i, n in enumerate(names)]
    lines += ["", f"{'aAcc':>7}  {'mIoU':>7}  {'mAcc':>7}", f"{_fmt(s.aacc):>7}  {_fmt(s.miou):>7}  {_fmt(s.macc):>7}"]
    return "\n".join(lines)


def warnings(r) -> list[str]:
    out = []
    expected = (r.protocol or {}).get("gt_layout")
    if expected and r.gt.layout not in (expected, "folder"):
        out.append(f"protocol {r.protocol['name']} expects {expected} ground truth, but '{r.gt.root}' looks like "
                   f"{r.gt.layout}")
    if r.missing:
        out.append(f"{len(r.missing)} ground-truth images had no prediction and were not scored")
    if r.extra:
        out.append(f"{len(r.extra)} predictions have no ground truth and were ignored")
    if r.match.unmatched_pred:
        out.append(f"prediction classes with no ground-truth class (scored as wrong): {', '.join(r.match.unmatched_pred)}")
    if r.match.unmatched_gt and not r.match.identity:
        out.append(f"ground-truth classes no prediction class matches: {', '.join(r.match.unmatched_gt)}")
    outside = int(r.confusion[-1].sum())
    if outside:
        out.append(f"{outside} ground-truth pixels hold values outside the {len(r.gt_classes)} classes (counted as mmseg "
                   f"does: in predictions' areas, in no class's label area); check the layout and --reduce-zero-label")
    if r.resized:
        out.append(f"{r.resized} predictions were resized (nearest) to their ground truth's size")
    return out


def markdown(r, doc: dict) -> str:
    s = doc["summary"]
    f = lambda v: "nan" if v is None else f"{v:.2f}"
    lines = [
        "# ovlabel eval report", "",
        f"- prediction: `{doc['prediction']['path']}` ({doc['prediction']['kind']}, classes: {doc['prediction']['classes']})",
        f"- ground truth: {doc['ground_truth']['description']}; classes {doc['ground_truth']['classes']}; "
        f"reduce_zero_label {doc['ground_truth']['reduce_zero_label']}",
        f"- protocol: {doc['protocol']['name'] if doc['protocol'] else 'none'}; unlabeled predictions count as: "
        f"{r.unlabeled_as or 'wrong'}; ignore index 255",
        f"- images scored: {r.evaluated}; missing predictions: {len(r.missing)}; predictions without GT: {len(r.extra)}",
        "", "| aAcc | mIoU | mAcc | classes scored |", "|---:|---:|---:|---:|",
        f"| {f(s['aAcc'])} | {f(s['mIoU'])} | {f(s['mAcc'])} | {s['classes_scored']} / {s['classes']} |", "",
        "mmsegmentation IoUMetric semantics: intersections and unions are summed over the whole dataset before "
        "dividing; a class absent from both prediction and ground truth is nan and left out of the means.", "",
    ]
    for w in warnings(r):
        lines.append(f"> {w}")
    lines += ["", "## Per class", "", "| class | IoU | Acc | GT pixels | predicted pixels |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['class']} | {f(c['IoU'])} | {f(c['Acc'])} | {c['label_area']} | {c['pred_area']} |"
              for c in doc["per_class"]]
    labels = doc["confusion_matrix"]["labels"]
    lines += ["", "## Confusion matrix", "",
              "Pixel counts; rows: ground truth, columns: prediction; `(other)` row: ground-truth values outside the "
              "class list; `(other)` column: unlabeled or unmatched predictions.", ""]
    table = ["| GT \\ pred | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    table += [f"| {labels[i]} | " + " | ".join(str(v) for v in row) + " |"
              for i, row in enumerate(doc["confusion_matrix"]["counts"])]
    if len(labels) - 1 > MD_MATRIX_FOLD:
        lines += ["<details><summary>full matrix</summary>", ""] + table + ["", "</details>"]
    else:
        lines += table
    return "\n".join(lines) + "\n"


def write_reports(r, json_path: Path) -> tuple[Path, Path]:
    """Write ``json_path`` and the Markdown next to it (same stem, ``.md``), atomically."""
    json_path = json_path.with_suffix(".json")
    md_path = json_path.with_suffix(".md")
    doc = report_dict(r)
    write_json(json_path, doc)
    write_text(md_path, markdown(r, doc))
    return json_path, md_path
