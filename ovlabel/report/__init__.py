"""``ovlabel report RUN``: one self-contained HTML page a person opens in a browser to review a run.

Provenance, per-class pixel and mask counts, the distribution of the label-quality estimate
(:mod:`ovlabel.quality`), a grid of overlays sorted by that estimate (least certain first, each linking
to its full-size overlay and listing its masks), drift against another run (:mod:`ovlabel.diff`) and
evaluation results (the run's ``eval/*.json``, or ``--gt`` scored now). It reads the run's artifacts and
source images only: no model, no torch, nothing written into the run but the page itself (by default
``RUN/report.html``, so links to ``RUN/overlays/`` resolve).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ovlabel.errors import OvlabelError

#: Images in the review grid when ``review`` is not given.
DEFAULT_GRID = 60


@dataclass
class ReportResult:
    """The page written, and the manifest rows of the images shown in the grid (least certain first)."""

    path: Path
    shown: list[dict] = field(default_factory=list)
    spearman: float | None = None


def build_report(
    run_dir: str | Path, out: str | Path | None = None, against: str | Path | None = None,
    gt: str | Path | None = None, eval_cfg=None, review: int | None = None, images: str | Path | None = None,
    workers: int | None = None, thumb_size: int = 320, full_size: int = 1024, reference: str | Path | None = None,
) -> ReportResult:
    """Write the report of the complete run ``run_dir`` to ``out`` (default ``RUN/report.html``).

    ``review``: the grid shows this many least certain images (default :data:`DEFAULT_GRID`);
    ``against``: another run to measure label drift against; ``gt``: ground truth to score the run
    with ``eval_cfg`` (an :class:`ovlabel.config.EvalConfig`; its reports go to a temporary folder, not
    into the run), adding the per-image comparison of the estimate with the true mIoU; ``images``: the
    image root if the images moved; ``reference``: another labeller's run of the same images, whose label
    maps join the estimate (:func:`ovlabel.report.data.apply_reference`). Thumbnails are at most
    ``thumb_size`` px; images without a full-size overlay in ``RUN/overlays/`` get one of at most
    ``full_size`` px embedded.
    """
    from ovlabel.artifacts import RunLayout
    from ovlabel.io.atomic import write_text
    from ovlabel.quality import least_certain
    from ovlabel.report import html
    from ovlabel.report.data import apply_reference, load_run
    from ovlabel.report.images import data_uri, overlay_link, overlay_picture

    if review is not None and review < 0:
        raise OvlabelError(f"--review {review} is invalid: expected a number of images >= 0")
    data = load_run(run_dir, workers)
    if reference is not None:
        apply_reference(data, reference)
    layout = RunLayout(data.root)
    page_path = Path(out).expanduser().resolve() if out else data.root / "report.html"
    if page_path.is_dir():
        raise OvlabelError(f"--out '{page_path}' is a folder; give the path of the .html file to write")
    shown = least_certain(data.rows, DEFAULT_GRID if review is None else review)
    image_root = data.image_root(images)

    cards, boxes = [], []
    for i, row in enumerate(shown):
        picture, has_source = overlay_picture(layout, image_root, row, data.classes)
        link = overlay_link(layout, row, page_path)
        if link is None:
            anchor = f"full-{i}"
            boxes.append(html.lightbox(anchor, data_uri(picture, full_size), row["file"]))
            target = f"#{anchor}"
        else:
            target = html.href(link)
        cards.append(html.card(row, data.masks.get(row["image_id"], []), data_uri(picture, thumb_size), target,
                               has_source))
    sections = [
        ("provenance", "Provenance", html.provenance(data.doc)),
        ("classes", "Classes", html.classes_section(data)),
        ("quality", "Label quality", html.quality_section(data, len(shown))),
        ("grid", f"Review: the {len(shown)} least certain images",
         f"<div class='grid'>{''.join(cards)}</div>" if cards else "<p>no labelled images</p>"),
    ]
    if against is not None:
        from ovlabel.diff import diff_runs

        sections.append(("drift", "Drift", html.drift_section(diff_runs(data.root, against, workers))))
    evals, pairs, rho = dict(data.evals), None, None
    if gt is not None:
        name, doc, pairs, rho = _score(data, gt, eval_cfg)
        evals = {f"{name} (scored now)": doc} | evals
    if evals:
        sections.append(("eval", "Evaluation", html.eval_section(evals, pairs, rho)))
    title = f"ovlabel report: {data.root.name}"
    write_text(page_path, html.page(title, sections, "".join(boxes)))
    return ReportResult(page_path, shown, rho)


def _score(data, gt, eval_cfg):
    """Score the run against ``gt`` (reports in a temporary folder); per image (estimate, true mIoU)."""
    from ovlabel.config import EvalConfig
    from ovlabel.evaluate.report import report_dict
    from ovlabel.evaluate.run import evaluate

    cfg = eval_cfg or EvalConfig(progress=False)
    with tempfile.TemporaryDirectory(prefix="ovlabel-report-") as tmp:
        result = evaluate(data.root, gt, replace(cfg, report=str(Path(tmp) / "eval.json")))
        doc = report_dict(result)
    by_label = {data.root / r["label_file"]: r for r in data.ok}
    pairs = [(by_label[p]["quality"], v) for p, v in sorted(result.per_image.items())
             if p in by_label and by_label[p].get("quality") is not None and v == v]
    rho = None
    if len(pairs) >= 3:
        from scipy.stats import spearmanr

        rho = float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    name = (result.protocol or {}).get("name") or f"{result.gt.layout}-{result.gt.split}"
    return name, doc, pairs, rho
