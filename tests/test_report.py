"""``ovlabel report`` and ``show --review`` (issue 17, item 2): a self-contained page with what a reviewer
needs, checked as HTML and, where Chromium is installed, as a rendered screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ovlabel.artifacts import RunLayout, read_label_png, read_manifest
from ovlabel.cli import app
from ovlabel.config import EvalConfig
from ovlabel.errors import OvlabelError
from ovlabel.report import build_report
from ovlabel.report.data import apply_reference, load_run
from scenes import CLASSES

runner = CliRunner()


@pytest.fixture
def run_copy(calibrated_run, tmp_path):
    """A private copy of the calibrated run (tests here add overlays or reports to it)."""
    run, images, gt, kinds = calibrated_run
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    doc = json.loads((dest / "run.json").read_text())
    return dest, images, gt, doc


def cards(page: str) -> list[tuple[float, str]]:
    return [(float(q), f) for q, f in re.findall(r"<span class='q'>quality ([0-9.]+)</span> · ([^<]+)</div>", page)]


def test_page_is_self_contained_and_shows_what_a_reviewer_needs(run_copy, tmp_path):
    run, _, _, doc = run_copy
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "page" / "review.html"
    result = build_report(run, out=out, review=5)
    page = out.read_text(encoding="utf-8")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run is only read
    # no network, no script: every picture is inline or relative
    assert not re.search(r"(src|href)=['\"]https?:", page) and "<script" not in page
    assert page.count("data:image/jpeg;base64,") == 2 * 5  # thumbnail + full-size lightbox per card
    # provenance
    assert "pseudo-label" in page and "clip:scene-colour" in page and doc["settings_key"] in page
    # per-class pixel and mask counts, as in the label maps and masks.parquet
    layout = RunLayout(run)
    ok = [r for r in read_manifest(layout.manifest) if r["status"] == "ok"]
    pixels = sum(np.bincount(read_label_png(run / r["label_file"]).ravel(), minlength=256) for r in ok)
    for c, name in enumerate(CLASSES):
        if pixels[c]:
            assert f"{name}</td><td class='n'>{int(pixels[c]):,}</td>" in page
    # the quality distribution as an inline SVG histogram
    assert "<svg" in page and "estimated quality per image" in page
    # the grid: the 5 least certain images, least certain first, each with its masks
    shown = cards(page)
    assert [f for _, f in shown] == [r["file"] for r in result.shown] and len(shown) == 5
    assert [q for q, _ in shown] == sorted(q for q, _ in shown)
    assert max(q for q, _ in shown) <= min(r["quality"] for r in ok if r["file"] not in {f for _, f in shown}) + 1e-3
    assert page.count("<th>class</th><th>source</th><th>score</th><th>quality</th>") == 5


def test_links_go_to_full_size_overlays_when_the_run_has_them(run_copy, tmp_path):
    run, _, _, _ = run_copy
    res = runner.invoke(app, ["show", str(run), "--review", "3"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3 and "3 overlays" in res.output
    assert len(list((run / "overlays").rglob("*.jpg"))) == 3
    out = tmp_path / "elsewhere" / "r.html"
    build_report(run, out=out, review=3)
    page = out.read_text(encoding="utf-8")
    links = re.findall(r"<a href='([^'#][^']*\.jpg)'>", page)
    assert len(links) == 3 and all((out.parent / link).resolve().is_file() for link in links)
    assert page.count("class='lightbox'") == 0


def test_drift_and_ground_truth_sections(run_copy, tmp_path):
    run, images, gt, _ = run_copy
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for name, lab in gt.items():
        Image.fromarray(lab).save(gt_dir / name)
    out = tmp_path / "r.html"
    result = build_report(run, out=out, against=run, gt=gt_dir,
                          eval_cfg=EvalConfig(gt_layout="folder", gt_classes=",".join(CLASSES), progress=False))
    page = out.read_text(encoding="utf-8")
    assert "drift <b>0.0000</b>" in page  # a run against itself
    assert "mIoU" in page and "estimate against the true per-image mIoU" in page
    assert result.spearman is not None and -1 <= result.spearman <= 1
    assert not (run / "eval").exists()  # scored into a temporary folder


def test_a_second_labeller_joins_the_estimate(run_copy, tmp_path):
    run, _, _, _ = run_copy
    alone = build_report(run, out=tmp_path / "a.html", review=16)
    data = load_run(run)
    assert apply_reference(data, run) == len(data.ok)  # every image, same input
    both = build_report(run, out=tmp_path / "b.html", review=16, reference=run)
    assert "with reference" in (tmp_path / "b.html").read_text(encoding="utf-8")
    q_alone = {r["file"]: r["quality"] for r in alone.shown}
    q_both = {r["file"]: r["quality"] for r in both.shown}
    assert q_alone.keys() == q_both.keys() and q_alone != q_both


def test_cli_report_and_bad_input(run_copy, tmp_path):
    run, _, _, _ = run_copy
    res = runner.invoke(app, ["report", str(run), "--review", "2"])
    assert res.exit_code == 0, res.output
    assert (run / "report.html").is_file() and "report:" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not an ovlabel run" in res.output
    with pytest.raises(OvlabelError, match="--review -1"):
        build_report(run, review=-1)


def test_a_run_from_before_the_quality_columns_gets_its_estimate_computed(run_copy, tmp_path):
    import pyarrow.parquet as pq

    run, _, _, _ = run_copy
    layout = RunLayout(run)
    m = pq.read_table(layout.manifest)
    pq.write_table(m.select(m.schema.names[:9]), layout.manifest)  # an ovlabel 0.1 manifest
    t = pq.read_table(layout.masks)
    pq.write_table(t.select([n for n in t.schema.names if n not in ("agreement", "quality")]), layout.masks)
    result = build_report(run, out=tmp_path / "r.html", review=4)
    assert len(result.shown) == 4 and all(r["quality"] is not None for r in result.shown)
    assert "computed now from masks.parquet" in (tmp_path / "r.html").read_text(encoding="utf-8")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(run_copy, tmp_path):
    run, _, _, _ = run_copy
    out = tmp_path / "r.html"
    build_report(run, out=out, review=4)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,1800", out.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    colours = np.unique(img.reshape(-1, 3)[:: 7], axis=0)
    assert len(colours) > 200  # text, charts and photos, not a blank or error page
    assert (img.min(axis=-1) < 100).mean() > 0.01  # dark pixels: text and pictures were drawn
