"""CI that regenerates labels (issue 7): determinism, SIGKILL safety, the run lock, ``ovlabel diff``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import REPO, TINY, artifact_bytes, runner

from conftest import blocks_image, save
from ovlabel.artifacts import RunLayout, label_names, read_label_png, write_label_png, write_manifest
from ovlabel.cli import app
from ovlabel.diff import DRIFT_EXIT_CODE, diff_runs
from ovlabel.engine import Inputs, check_output_dir
from ovlabel.errors import OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.io.lock import RunLocked, run_lock

DATA_FILES = ("masks.parquet", "coco.json", "manifest.parquet")
FAST = ["--vocab", "cat,dog,sky", "--stages", "1.1"]  # the bookkeeping under test does not depend on either


def fast_label(images: Path, out: Path, *extra):
    return runner.invoke(app, ["pseudo-label", str(images), "--out", str(out), *TINY, *FAST, *extra])


def subprocess_label(images: Path, out: Path, kill_at: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OVLABEL_TEST_KILL_AT=kill_at)
    cmd = [sys.executable, "-m", "ovlabel", "pseudo-label", str(images), "--out", str(out), *TINY, *FAST]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def move_on(images: Path) -> None:
    """The input of the next CI run: one image changed, one added, one removed."""
    save(images / "a.jpg", blocks_image(50, 50, [(0, 250, 0)]))
    save(images / "new.png", blocks_image(40, 60, [(0, 0, 0), (255, 255, 255)]))
    (images / "tiny.png").unlink()


def test_sigkill_at_any_point_then_a_rerun_equals_an_uninterrupted_run(image_folder, tmp_path):
    v1 = tmp_path / "v1"
    assert fast_label(image_folder, v1).exit_code == 0
    old = artifact_bytes(v1)
    move_on(image_folder)
    reference = tmp_path / "reference"  # the uninterrupted incremental run
    shutil.copytree(v1, reference)
    res = fast_label(image_folder, reference)
    assert res.exit_code == 0, res.output
    assert "input since the last run: 1 new, 1 changed, 1 removed, 3 unchanged" in res.output
    new = artifact_bytes(reference)
    fresh = tmp_path / "fresh"  # determinism: a fresh output folder gives the same bytes
    assert fast_label(image_folder, fresh).exit_code == 0
    assert artifact_bytes(fresh) == new
    for name in DATA_FILES:  # no absolute paths in the data files (they belong in run.json)
        assert str(tmp_path).encode() not in new[name]

    run = tmp_path / "run"
    shutil.copytree(v1, run)
    # killed while labelling (after the first new label map), between the renames of coco.json and
    # masks.parquet, and with the new manifest written but not yet renamed
    for point in ("after:*.png#1", "after:coco.json", "before:manifest.parquet"):
        proc = subprocess_label(image_folder, run, point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stdout, proc.stderr)
        assert json.loads((run / "run.json").read_text())["status"] == "running"
        for f, data in artifact_bytes_lenient(run).items():  # every artifact is old or new, never partial
            assert data in (old.get(f), new.get(f)), (point, f)
        if point == "after:coco.json":  # a mixture: only the next run makes the set consistent again
            assert (run / "coco.json").read_bytes() == new["coco.json"]
            assert (run / "masks.parquet").read_bytes() == old["masks.parquet"]
    assert list(run.glob(".manifest.parquet.*.tmp"))  # the last kill left its temporary file
    res = fast_label(image_folder, run)
    assert res.exit_code == 0, res.output
    assert "5 labelled (0 new, 5 already done)" in res.output and "did not finish" in res.output
    assert artifact_bytes(run) == new
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()

    # ovlabel diff: identical runs have zero drift; the previous labels against the new ones list the changes
    res = runner.invoke(app, ["diff", str(reference), str(run), "--fail-above", "0"])
    assert res.exit_code == 0, res.output
    assert "drift 0.0000 (pixel agreement 1.0000)" in res.output
    report = diff_runs(v1, run)
    assert (report.added, report.removed, report.input_changed) == (["new.png"], ["tiny.png"], ["a.jpg"])
    assert report.images_same_input == 3 and report.drift == 0.0


def artifact_bytes_lenient(out: Path) -> dict[str, bytes]:
    files = [f for f in DATA_FILES if (out / f).exists()]
    files += [str(p.relative_to(out)) for p in sorted((out / "labels").rglob("*.png"))]
    return {f: (out / f).read_bytes() for f in files}


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(image_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import sys, time\nfrom ovlabel.io.lock import run_lock\nwith run_lock(sys.argv[1], 'pseudo-label'):\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = fast_label(image_folder, out)
        assert res.exit_code == 2
        assert "is in use by another ovlabel run (`pseudo-label`, pid " + str(holder.pid) in res.output
        assert not (out / "run.json").exists()  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").exists()  # the killed holder leaves its file, but the kernel dropped its lock
    res = fast_label(image_folder, out)
    assert res.exit_code == 0, res.output
    assert not (out / ".lock").exists()

    with run_lock(out, "test"):  # classify-masks, show and refine take the same lock
        res = runner.invoke(app, ["classify-masks", str(out), "--no-progress"])
        assert res.exit_code == 2 and "in use by another ovlabel run (`test`" in res.output
        res = runner.invoke(app, ["show", str(out)])
        assert res.exit_code == 2 and "in use by another ovlabel run (`test`" in res.output
        with pytest.raises(RunLocked):
            with run_lock(out, "nested"):
                pass
    refined = tmp_path / "refined"
    refined.mkdir()
    with run_lock(refined, "test"):
        res = runner.invoke(app, ["refine", str(out), "--out", str(refined), "--no-progress", "--workers", "1"])
        assert res.exit_code == 2 and "in use by another ovlabel run" in res.output


def test_leftovers_of_a_killed_first_run_do_not_make_a_folder_foreign(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("{}")
    (out / ".run.json.k2j4h1.tmp").write_text("{")
    images = Inputs([], tmp_path / "images", {"kind": "folder"})
    check_output_dir(out, images)  # no error
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OvlabelError, match="not an ovlabel run"):
        check_output_dir(out, images)


def make_run(root: Path, classes: list[str], images: dict[str, tuple[str, np.ndarray]]) -> Path:
    """A complete run directory by hand: ``images`` maps file -> (sha256, uint8 label map)."""
    layout = RunLayout(root)
    names = label_names(list(images))
    rows = []
    for i, (f, (sha, lm)) in enumerate(sorted(images.items()), start=1):
        write_label_png(layout.labels / names[f], lm)
        rows.append({"image_id": i, "file": f, "sha256": sha, "width": lm.shape[1], "height": lm.shape[0],
                     "status": "ok", "reason": None, "label_file": f"labels/{names[f]}", "num_masks": 1})
    write_manifest(layout.manifest, rows)
    write_json(layout.run_json, {"status": "complete", "settings": {"vocabulary": {"classes": classes}}})
    return root


def test_diff_matches_classes_by_name_and_reports_a_crafted_change(tmp_path):
    x = np.full((20, 30), 255, np.uint8)
    x[:, :15] = 0  # cat (index 0 in A)
    x[:10, 15:] = 2  # sky
    y = np.zeros((10, 10), np.uint8)
    a = make_run(tmp_path / "a", ["cat", "dog", "sky"], {"x.png": ("s1", x), "y.png": ("s2", y), "gone.png": ("s3", y)})
    perm = {0: 1, 1: 0, 2: 2, 255: 255}  # B's vocabulary lists dog first
    remap = np.vectorize(perm.get, otypes=[np.uint8])
    same = make_run(tmp_path / "same", ["dog", "cat", "sky"], {"x.png": ("s1", remap(x)), "y.png": ("s2", remap(y)),
                                                               "gone.png": ("s3", remap(y))})
    res = runner.invoke(app, ["diff", str(a), str(same), "--fail-above", "0"])
    assert res.exit_code == 0, res.output
    assert "drift 0.0000" in res.output and "0 of 3 same-input images have changed labels" in res.output

    x2 = x.copy()
    x2[:5, :4] = 1  # 20 cat pixels become dog
    y2 = np.full((12, 10), 2, np.uint8)  # y's input changed (other hash, other size): not drift
    b = make_run(tmp_path / "b", ["dog", "cat", "sky", "rocket"],
                 {"x.png": ("s1", remap(x2)), "y.png": ("s9", y2), "new.png": ("s4", y)})
    report_file = tmp_path / "drift.json"
    md = tmp_path / "drift.md"
    res = runner.invoke(app, ["diff", str(a), str(b), "--fail-above", "0.03", "--json", str(report_file), "--markdown", str(md)])
    assert res.exit_code == DRIFT_EXIT_CODE, res.output
    assert "exceeds --fail-above 0.03" in res.output
    report = json.loads(report_file.read_text())
    assert report["drift"] == pytest.approx(20 / 600)
    assert (report["added"], report["removed"], report["input_changed"]) == (["new.png"], ["gone.png"], ["y.png"])
    assert report["images_same_input"] == 1 and report["images_label_changed"] == 1
    cls = {c["name"]: c for c in report["per_class"]}
    assert cls["cat"]["iou"] == pytest.approx((300 - 20) / 300) and cls["cat"]["pixels_b"] == 280
    assert cls["dog"]["iou"] == 0.0 and cls["dog"]["pixels_b"] == 20
    assert cls["sky"]["iou"] == 1.0 and cls["rocket"]["iou"] is None and not cls["rocket"]["in_a"]
    (img,) = [d for d in report["per_image"] if d["file"] == "x.png"]
    assert img["changed_pixels"] == 20 and img["iou"] == pytest.approx((280 / 300 + 0 + 1) / 3)
    assert "| drift (1 - pixel agreement, same-input images) | **0.0333** |" in md.read_text()
    assert runner.invoke(app, ["diff", str(a), str(b), "--fail-above", "0.04"]).exit_code == 0
    assert read_label_png(a / "labels" / "x.png").tolist() == x.tolist()  # runs are only read


def test_diff_refuses_what_is_not_a_complete_run(tmp_path):
    a = make_run(tmp_path / "a", ["cat"], {"x.png": ("s1", np.zeros((2, 2), np.uint8))})
    res = runner.invoke(app, ["diff", str(a), str(tmp_path)])
    assert res.exit_code == 2 and "not an ovlabel run" in res.output
    doc = json.loads((a / "run.json").read_text())
    write_json(a / "run.json", doc | {"status": "running"})
    res = runner.invoke(app, ["diff", str(a), str(a)])
    assert res.exit_code == 2 and "is not complete (status 'running')" in res.output
    res = runner.invoke(app, ["diff", str(a), str(a), "--fail-above", "2"])
    assert res.exit_code == 2 and "--fail-above 2.0 is invalid" in res.output


def test_settings_key_follows_weight_file_contents_not_folders(tmp_path):
    from ovlabel.config import PseudoLabelConfig
    from ovlabel.labelling.stage1 import run_settings, weight_digests
    from ovlabel.models.registry import ModelSpec, resolve_models
    from ovlabel.vocab import load_templates, load_vocabulary

    weights = tmp_path / "sam.pth"
    weights.write_bytes(b"v1")

    def settings(folder: str):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "classes.txt").write_text("cat\ndog, puppy\n")
        cfg = PseudoLabelConfig(vocab=str(tmp_path / folder / "classes.txt"), sam=f"sam:vit_b/{weights}", models="tiny")
        specs = resolve_models(cfg.models, {"clip": cfg.clip, "sam": cfg.sam})
        names = {f: s.name for f, s in specs.items()}
        return run_settings(cfg, load_vocabulary(cfg.vocab), load_templates(cfg.templates), names, weight_digests(specs))

    first, keys = settings("checkout-1")
    assert settings("checkout-2")[1] == keys  # the vocabulary file moved with its checkout: same key
    assert first["vocabulary"]["source"] == "file:classes.txt" and str(tmp_path) not in json.dumps(first["vocabulary"])
    weights.write_bytes(b"other weights")  # same path, other contents
    assert settings("checkout-1")[1]["1.1"] != keys["1.1"]
    weights.unlink()
    with pytest.raises(OvlabelError, match="sam weights file .* does not exist"):
        weight_digests({"sam": ModelSpec("sam", "vit_b", "file", str(weights))})
