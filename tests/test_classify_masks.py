"""``pseudo-label`` with Stage 1.2 and ``classify-masks`` end to end, with tiny models (issue 3 items 1, 3-5)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
from test_cli import LOOSE, TINY, artifact_bytes, label, runner

from ovlabel.cli import app
from ovlabel.merge import sample_count


def classify(run, *extra):
    return runner.invoke(app, ["classify-masks", str(run), "--no-progress", *extra])


def passes(out):
    return json.loads((out / "run.json").read_text())["last_invocation"]["model_passes"]


def sources(out):
    return [m["source"] for m in pq.read_table(out / "masks.parquet").to_pylist()]


def test_classify_masks_adds_stage12_to_a_stage11_run_like_one_pseudo_label_run(image_folder, tmp_path):
    both = tmp_path / "both"
    assert label(image_folder, both, *LOOSE).exit_code == 0
    assert passes(both)["sam_image_encoder_passes"] == 5  # 1.1 and 1.2 share each image's embedding

    run = tmp_path / "run"
    assert label(image_folder, run, "--stages", "1.1").exit_code == 0
    assert set(sources(run)) == {"stage1.1"}
    (parts11,) = (run / "parts").iterdir()
    stamps = {f.name: f.stat().st_mtime_ns for f in parts11.iterdir()}

    res = classify(run, *LOOSE)
    assert res.exit_code == 0, res.output
    assert "5 labelled (5 new, 0 already done)" in res.output
    assert "recomputing: settings changed (automask, classify, merge, stages): Stage 1.2 of every image" in res.output
    p = passes(run)
    assert p["sam_image_encoder_passes"] == 5
    assert p["sam_prompts"] == 5 * 8 * 8  # the point grid only: Stage 1.1 was not decoded again
    assert {f.name: f.stat().st_mtime_ns for f in parts11.iterdir()} == stamps  # its parts untouched
    assert artifact_bytes(run) == artifact_bytes(both)  # same labels as running both stages at once
    doc = json.loads((run / "run.json").read_text())
    assert doc["command"] == "classify-masks" and doc["settings"]["stages"] == ["1.1", "1.2"]

    res = classify(run, *LOOSE)  # again: nothing to do, nothing loaded
    assert "5 labelled (0 new, 5 already done)" in res.output and passes(run) == {}
    assert artifact_bytes(run) == artifact_bytes(both)


def test_changing_only_the_merge_recomputes_nothing(image_folder, tmp_path):
    run = tmp_path / "run"
    assert label(image_folder, run, *LOOSE).exit_code == 0
    before = pq.read_table(run / "masks.parquet").to_pylist()
    per_image = Counter(m["image_id"] for m in before if m["source"] == "stage1.2")
    assert sum(per_image.values()) >= 4
    res = classify(run, "--stage12-ratio", "0.3", "--paint", "small-on-top")
    assert res.exit_code == 0, res.output
    assert "recomputing: settings changed (merge): re-merging the stages, no model pass needed" in res.output
    assert passes(run) == {}  # no model was loaded
    assert sources(run).count("stage1.2") == sum(sample_count(n, 0.3) for n in per_image.values())
    assert sources(run).count("stage1.1") == [m["source"] for m in before].count("stage1.1")
    doc = json.loads((run / "run.json").read_text())
    assert doc["settings"]["merge"] == {"stage12_ratio": 0.3, "seed": 0, "paint": "small-on-top"}
    assert doc["settings"]["automask"]["pred_iou_thresh"] == 0  # the run's own Stage 1.2 settings kept


def test_stage12_alone(image_folder, tmp_path):
    run = tmp_path / "run"
    res = label(image_folder, run, "--stages", "1.2", *LOOSE)
    assert res.exit_code == 0, res.output
    assert set(sources(run)) == {"stage1.2"}
    assert passes(run)["sam_prompts"] == 5 * 8 * 8  # the grid's prompts only, none of Stage 1.1


def test_pseudo_label_refuses_a_changed_stage12_without_overwrite(image_folder, tmp_path):
    run = tmp_path / "run"
    assert label(image_folder, run).exit_code == 0
    res = label(image_folder, run, "--classifier", "ovseg")
    assert res.exit_code == 2 and "changed: classify" in res.output
    assert f"ovlabel classify-masks {run}" in res.output  # Stage 1.1 is unchanged: say how to keep it


def test_classify_masks_errors(tmp_path, image_folder):
    res = classify(tmp_path)
    assert res.exit_code == 2 and "not an ovlabel run" in res.output
    run = tmp_path / "run"
    assert label(image_folder, run, "--stages", "1.1").exit_code == 0
    res = classify(run, "--classifier", "nope")
    assert res.exit_code == 2 and "--classifier nope is invalid" in res.output
    res = classify(run, "--images", str(tmp_path / "moved"))
    assert res.exit_code == 2 and "no longer at" in res.output
    assert TINY  # the run remembers its models: classify-masks needs no --models
