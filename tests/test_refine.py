"""Dense-CRF refinement: the CRF itself, and ``refine`` as a stage writing a new run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from conftest import save
from ovlabel.artifacts import RunLayout, label_names, read_label_png, write_label_png, write_manifest, write_soft_map
from ovlabel.cli import app
from ovlabel.config import CRFConfig, RefineConfig
from ovlabel.crf import refine_label_map, unaries_from_labels
from ovlabel.dataset import write_masks_and_coco
from ovlabel.errors import OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.labelling.refine import RefineStage, refine
from ovlabel.masks import MaskSet
from ovlabel.vocab import load_vocabulary

runner = CliRunner()
EDGE = 48  # the colour edge of two_regions()


def two_regions(h=64, w=96, seed=0) -> np.ndarray:
    """Red left of column EDGE, blue from it on, with mild noise."""
    img = np.zeros((h, w, 3), np.int16)
    img[:, :EDGE] = (200, 40, 40)
    img[:, EDGE:] = (40, 40, 200)
    img += np.random.default_rng(seed).integers(-8, 9, img.shape).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def off_by(shift: int, h=64, w=96, left=0, right=3) -> np.ndarray:
    lm = np.full((h, w), left, np.uint8)
    lm[:, EDGE - shift:] = right
    return lm


def test_crf_snaps_a_blurred_boundary_back_to_the_colour_edge():
    img, labels = two_regions(), off_by(8)
    refined, confidence = refine_label_map(img, labels, CRFConfig(blur_sigma=0.05))
    np.testing.assert_array_equal(refined, off_by(0))
    assert confidence.shape == refined.shape and confidence.min() > 0.5
    # without the blur the hard unaries pin the wrong boundary (seed 004, Tab. 5: the CRF needs the blur)
    pinned, _ = refine_label_map(img, labels, CRFConfig(blur_sigma=0.0))
    np.testing.assert_array_equal(pinned, labels)


def test_smoothed_unaries_sum_to_one_and_unlabeled_is_a_label_unless_filled():
    lm = off_by(0)
    lm[:10] = 255
    probs, labels = unaries_from_labels(lm, CRFConfig(blur_sigma=0.05))
    assert labels.tolist() == [0, 3, 255]
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert probs[0, 40, 0] > 0.99 and 0.3 < probs[0, 40, EDGE] < 0.7
    filled, flabels = unaries_from_labels(lm, CRFConfig(blur_sigma=0.05, fill_unlabeled=True))
    assert flabels.tolist() == [0, 3]
    np.testing.assert_allclose(filled.sum(axis=0), 1.0, atol=1e-5)
    refined, _ = refine_label_map(two_regions(), lm, CRFConfig(blur_sigma=0.05, fill_unlabeled=True))
    np.testing.assert_array_equal(refined, off_by(0))  # the unlabeled band is filled along the colour edge


def make_run(tmp_path: Path, vocab="red,blue,green,", labels=None, images=None, name="run") -> Path:
    """A complete run directory written with the artifact writers (no models): ``labels`` maps an image
    stem to its label map; images are PNGs under tmp_path/images."""
    from ovlabel.io.images import read_file

    vocab = load_vocabulary(vocab)
    labels = {k: np.asarray(v, np.uint8) for k, v in (labels or {"a": off_by(6, right=1), "b": off_by(-5, right=1)}).items()}
    images = images or {k: (two_regions(*lm.shape, seed=i) if lm.shape == (64, 96) else
                            np.full((*lm.shape, 3), 128, np.uint8)) for i, (k, lm) in enumerate(labels.items())}
    layout = RunLayout(tmp_path / name)
    rels = [f"{k}.png" for k in labels]
    names = label_names(rels)
    rows, per_image = [], []
    for image_id, (k, rel) in enumerate(zip(labels, rels), start=1):
        path = save(tmp_path / "images" / rel, images[k])
        lm = labels[k]
        classes = [int(c) for c in np.unique(lm) if c != 255]
        ms = MaskSet.from_dense(np.stack([lm == c for c in classes]), classes, [0.9] * len(classes), "stage1.1")
        write_label_png(layout.labels / names[rel], lm)
        rows.append({"image_id": image_id, "file": rel, "sha256": read_file(path)[1], "width": lm.shape[1],
                     "height": lm.shape[0], "status": "ok", "reason": None, "label_file": f"labels/{names[rel]}",
                     "num_masks": len(ms)})
        per_image.append((image_id, ms))
    write_masks_and_coco(layout, rows, per_image, vocab.names, {"description": "test"})
    write_manifest(layout.manifest, rows)
    write_json(layout.run_json, {"status": "complete", "command": "pseudo-label", "settings_key": "parentkey",
                                 "input": {"root": str(tmp_path / "images")},
                                 "settings": {"stages": ["1.1"], "vocabulary": vocab.to_json()}})
    return layout.root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_refine_writes_a_complete_new_run_and_never_touches_its_input(tmp_path):
    parent = make_run(tmp_path)
    before = tree_digest(parent)
    out = tmp_path / "refined"
    summary = refine(parent, out, RefineConfig(crf=CRFConfig(blur_sigma=0.1), workers=1, progress=False))
    assert tree_digest(parent) == before
    assert (summary.new, summary.reused, summary.failures) == (2, 0, [])
    for stem in ["a", "b"]:
        np.testing.assert_array_equal(read_label_png(out / "labels" / f"{stem}.png"), off_by(0, right=1))
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "complete" and doc["command"] == "refine"
    assert doc["parent"]["path"] == str(parent) and doc["parent"]["settings_key"] == "parentkey"
    assert doc["settings"]["refine"]["bi_w"] == 10.0 and doc["settings"]["stages"] == ["1.1", "refine"]
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    assert {m["source"] for m in masks} == {"refine"} and len(masks) == 4
    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red", "blue", "green"]
    for img in coco.loadImgs(coco.getImgIds()):
        painted = np.full((img["height"], img["width"]), 255, np.uint8)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            painted[coco.annToMask(a).astype(bool)] = a["category_id"] - 1
            assert 0.5 < a["score"] <= 1.0
        np.testing.assert_array_equal(painted, read_label_png(out / "labels" / img["file_name"]))
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [(r["image_id"], r["file"], r["num_masks"]) for r in manifest] == [(1, "a.png", 2), (2, "b.png", 2)]


def test_refine_resumes_without_redoing_finished_images(tmp_path):
    parent = make_run(tmp_path)
    out = tmp_path / "refined"
    cfg = RefineConfig(crf=CRFConfig(blur_sigma=0.1), workers=1, progress=False)
    refine(parent, out, cfg)
    finished = read_label_png(out / "labels" / "a.png")
    # simulate a kill after image a: b's part and label map are gone, the dataset files never written
    layout = RunLayout(out)
    stage = RefineStage(parent, cfg)
    (b,) = [item for item in stage.inputs.items if item.file == "b.png"]
    (layout.part(stage.key, stage.part_ids(b, b.sha256)["refine"])).unlink()
    (out / "labels" / "b.png").unlink()
    (out / "masks.parquet").unlink()
    summary = refine(parent, out, cfg)
    assert (summary.new, summary.reused) == (1, 1)
    np.testing.assert_array_equal(read_label_png(out / "labels" / "a.png"), finished)
    assert len(pq.read_table(out / "masks.parquet")) == 4
    again = refine(parent, out, cfg)
    assert (again.new, again.reused) == (0, 2)
    assert "input since the last run: 0 new, 0 changed, 0 removed, 2 unchanged" in again.describe()
    # new CRF settings on the same output are refused unless --overwrite
    with pytest.raises(OvlabelError, match="different settings"):
        refine(parent, out, RefineConfig(crf=CRFConfig(blur_sigma=0.1, bi_w=3), workers=1, progress=False))


def test_refine_uses_stored_soft_maps_when_present(tmp_path):
    parent = make_run(tmp_path)
    probs = np.zeros((2, 16, 24), np.float32)
    probs[1] = 0.95  # coarse soft map: "green" everywhere, "red" nowhere
    write_soft_map(RunLayout(parent).soft_map("labels/a.png"), probs, [0, 2])
    summary = refine(parent, tmp_path / "soft", RefineConfig(workers=1, progress=False))
    assert summary.soft == 1
    np.testing.assert_array_equal(read_label_png(tmp_path / "soft" / "labels" / "a.png"), np.full((64, 96), 2))
    hard = refine(parent, tmp_path / "hard", RefineConfig(crf=CRFConfig(use_soft=False), workers=1, progress=False))
    assert hard.soft == 0
    assert set(np.unique(read_label_png(tmp_path / "hard" / "labels" / "a.png"))) == {0, 1}


def test_refine_records_bad_images_as_failed_and_refuses_to_write_into_its_input(tmp_path):
    parent = make_run(tmp_path, labels={k: off_by(2, right=1) for k in "abcd"})
    save(tmp_path / "images" / "b.png", np.zeros((64, 96, 3), np.uint8))  # changed since the parent run
    (parent / "labels" / "c.png").write_bytes(b"not a png")  # damaged parent label map
    write_label_png(parent / "labels" / "d.png", off_by(2, right=7))  # class 7 of a 3-class vocabulary
    summary = refine(parent, tmp_path / "out", RefineConfig(workers=1, progress=False))
    assert summary.new == 1 and [f for f, _ in summary.failures] == ["b.png", "c.png", "d.png"]
    reasons = [r for _, r in summary.failures]
    assert "changed since the parent run" in reasons[0] and "refine error" in reasons[1] and "class index 7" in reasons[2]
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "failed"] and rows[1]["label_file"] is None
    for bad in [parent / "crf", parent]:
        with pytest.raises(OvlabelError, match="inside the input run"):
            refine(parent, bad, RefineConfig(workers=1, progress=False))
    with pytest.raises(OvlabelError, match="inside the image folder"):
        refine(parent, tmp_path / "images" / "crf", RefineConfig(workers=1, progress=False))


def test_refine_cli_runs_worker_processes_and_its_output_scores_with_eval(tmp_path):
    parent = make_run(tmp_path)
    before = tree_digest(parent)
    out = tmp_path / "crf"
    res = runner.invoke(app, ["refine", str(parent), "--out", str(out), "--workers", "2", "--blur-sigma", "0.1",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2 images: 2 refined (2 new, 0 already done), 0 failed; 4 masks" in res.output
    assert tree_digest(parent) == before
    for stem in ["a", "b"]:
        save(tmp_path / "gt" / f"{stem}.png", off_by(0, right=1))
    res = runner.invoke(app, ["eval", str(out), str(tmp_path / "gt"), "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "eval" / "folder-gt.json").read_text())
    assert doc["summary"]["mIoU"] == 100.0 and doc["class_matching"]["identity"]
    res = runner.invoke(app, ["eval", str(parent), str(tmp_path / "gt"), "--no-progress",
                              "--report", str(tmp_path / "parent.json")])
    assert json.loads((tmp_path / "parent.json").read_text())["summary"]["mIoU"] < 90
