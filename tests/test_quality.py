"""Label quality without ground truth (issue 17, item 1): the signals, their combination, where they are
stored, and a conservative calibration bound on held-out corrupted scenes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from calibration import collect, spearman

from ovlabel.artifacts import (
    MANIFEST_QUALITY_COLUMNS,
    MANIFEST_SCHEMA,
    MASKS_SCHEMA,
    RunLayout,
    read_manifest,
    read_part,
)
from ovlabel.dataset import quality_summary
from ovlabel.masks import SOURCE_STAGE_1_1, SOURCE_STAGE_1_2, MaskSet
from ovlabel.quality import WEIGHTS, class_summary, combine, image_quality, label_agreement, least_certain, mask_margins
from ovlabel.stages.classify import vocabulary_margin


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_vocabulary_margin_is_own_minus_best_other():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    m = vocabulary_margin(probs, [0, 1, 2])
    assert np.allclose(m, [0.5, -0.5, 0.7])


def test_margins_prefer_the_stored_vocabulary_margin_and_fall_back_to_topk():
    dense = np.stack([rect(4, 4, 0, 2, 0, 4), rect(4, 4, 2, 4, 0, 4), rect(4, 4, 0, 4, 0, 1), rect(4, 4, 0, 1, 0, 1)])
    topk = [None, (np.array([1, 2]), np.array([0.6, 0.4])), (np.array([2, 0]), np.array([0.9, 0.1])),
            (np.array([3]), np.array([1.0]))]
    ms = MaskSet.from_dense(dense, [0, 1, 0, 3], [0.9] * 4, SOURCE_STAGE_1_2, topk=topk)
    ms.margin = np.array([0.3, np.nan, np.nan, np.nan], np.float32)
    m = mask_margins(ms)
    assert m[0] == pytest.approx(0.3)  # stored
    assert m[1] == pytest.approx(0.2)  # top-k: its class first
    assert m[2] == pytest.approx(0.1 - 0.9)  # its class is second in the top-k
    assert np.isnan(m[3])  # one candidate class: no margin


def test_image_quality_counts_what_the_label_map_shows():
    h, w = 10, 10
    sure = rect(h, w, 0, 5, 0, 10)  # top half, confident
    unsure = rect(h, w, 5, 8, 0, 10)  # three rows, the classifier prefers another class
    ms = MaskSet.from_dense(np.stack([sure, unsure]), [0, 1], [0.9, 0.8], SOURCE_STAGE_1_2,
                            stability=[1.0, 0.5])
    ms.margin = np.array([0.8, -0.6], np.float32)
    q = image_quality(ms, h, w)
    assert q.unlabeled_fraction == pytest.approx(0.2)
    assert q.signals["margin"] == pytest.approx((50 * 0.9 + 30 * 0.2) / 80)  # (margin + 1) / 2, by visible pixels
    assert q.margin == pytest.approx((50 * 0.8 - 30 * 0.6) / 80)
    assert q.signals["pred_iou"] == pytest.approx((50 * 0.9 + 30 * 0.8) / 80)
    assert q.signals["agreement"] is None  # one labeller
    assert q.quality == pytest.approx(0.8 * combine(q.signals))
    assert q.mask_quality[0] > q.mask_quality[1]
    cols = q.manifest_columns()
    assert list(cols) == list(MANIFEST_QUALITY_COLUMNS) and cols["unlabeled_fraction"] == pytest.approx(0.2)


def test_agreement_between_stage_11_and_12_and_with_a_reference():
    h, w = 8, 8
    a = MaskSet.from_dense(rect(h, w, 0, 8, 0, 4)[None], [1], [0.9], SOURCE_STAGE_1_1)
    b = MaskSet.from_dense(np.stack([rect(h, w, 0, 4, 0, 8), rect(h, w, 4, 8, 0, 8)]), [1, 2], [0.8, 0.8],
                           SOURCE_STAGE_1_2)
    q = image_quality(MaskSet.concat([a, b]), h, w)
    # 1.1's mask: half its pixels are class 1 in 1.2; 1.2's first mask: its left half is 1.1's class 1
    assert q.mask_agreement[0] == pytest.approx(0.5)
    assert q.mask_agreement[1] == pytest.approx(1.0) and q.mask_agreement[2] == pytest.approx(0.0)
    assert q.signals["agreement"] == pytest.approx((16 + 16) / (32 + 16 + 16))
    ref = np.full((h, w), 2, np.uint8)
    ref[:, 6:] = 255
    r = image_quality(b, h, w, reference=ref)
    assert r.mask_reference[0] == pytest.approx(0.0) and r.mask_reference[1] == pytest.approx(1.0)
    assert label_agreement(b.label_map(h, w), ref) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference label map"):
        image_quality(b, h, w, reference=ref[:4])


def test_combine_renormalises_over_available_signals_and_empty_images_score_zero():
    w = {"margin": 0.5, "pred_iou": 0.25, "reference": 0.25}
    assert combine({"margin": 1.0, "pred_iou": 0.0, "reference": None}, w) == pytest.approx(2 / 3)
    assert combine({"margin": None, "pred_iou": float("nan")}, w) is None
    q = image_quality(MaskSet.empty(), 4, 4)
    assert q.quality == 0.0 and q.unlabeled_fraction == 1.0
    assert set(WEIGHTS) == {"margin", "pred_iou", "stability", "agreement", "reference"}


def test_least_certain_and_class_summary():
    rows = [{"file": f, "status": s, "quality": q} for f, s, q in
            [("a", "ok", 0.9), ("b", "ok", None), ("c", "failed", None), ("d", "ok", 0.2), ("e", "ok", 0.2)]]
    assert [r["file"] for r in least_certain(rows, 3)] == ["d", "e", "a"]
    assert [r["file"] for r in least_certain(rows, 10)] == ["d", "e", "a", "b"]
    s = class_summary(["x", "y", "x"], [10, 5, 30], [0.2, None, 0.6], [1, 1, 2])
    assert s["x"] == {"masks": 2, "images": 2, "pixels": 40, "mean_quality": 0.5, "low_quality_masks": 1}
    assert s["y"]["mean_quality"] is None


def test_old_parts_without_the_new_fields_read_as_unknown(tmp_path):
    table = pa.table({"source": ["stage1.1"], "class_index": pa.array([0], pa.int32()),
                      "score": pa.array([0.5], pa.float32()), "rle_size": [[2, 2]], "rle_counts": ["04"],
                      "bbox_xyxy": [[0.0, 0.0, 2.0, 2.0]], "area": [4], "points": [None]})
    path = tmp_path / "old.parquet"
    pq.write_table(table.replace_schema_metadata({b"ovlabel": b'{"width": 2, "height": 2}'}), path)
    ms, _, _ = read_part(path)
    assert np.isnan(ms.stability).all() and np.isnan(ms.margin).all() and ms.topk == [None]


def test_schemas_keep_their_order_with_new_columns_last():
    assert MANIFEST_SCHEMA.names[:9] == ["image_id", "file", "sha256", "width", "height", "status", "reason",
                                         "label_file", "num_masks"]
    assert MANIFEST_SCHEMA.names[9:] == list(MANIFEST_QUALITY_COLUMNS)
    assert MASKS_SCHEMA.names[-5:] == ["topk_scores", "stability", "margin", "agreement", "quality"]


def test_a_pipeline_run_stores_the_signals_and_the_estimate(calibrated_run):
    run, _, _, _ = calibrated_run
    layout = RunLayout(run)
    masks = pq.read_table(layout.masks).to_pylist()
    sam = [m for m in masks if m["source"] in (SOURCE_STAGE_1_1, SOURCE_STAGE_1_2)]
    assert sam and all(m["stability"] is not None and 0 <= m["stability"] <= 1 for m in sam)
    assert all(m["margin"] is not None and -1 <= m["margin"] <= 1 for m in sam)  # both stages store it
    assert all(m["quality"] is not None for m in sam)
    assert any(m["agreement"] is not None for m in sam)
    rows = [r for r in read_manifest(layout.manifest) if r["status"] == "ok"]
    assert all(r["quality"] is not None and 0 <= r["quality"] <= 1 for r in rows)
    doc = json.loads(layout.run_json.read_text())
    assert doc["quality"] == quality_summary(layout)
    assert doc["quality"]["images"]["estimated"] == len(rows)
    assert set(doc["quality"]["classes"]) <= {"red square", "green disk", "blue stripes", "grey background"}


def test_estimate_ranks_held_out_corrupted_scenes_like_their_true_miou(calibrated_run):
    """Conservative bound on 16 held-out scenes (docs/quality.md gives the full calibration: Spearman
    about 0.55-0.6 without a second labeller on 60 scenes)."""
    run, _, gt, _ = calibrated_run
    rows = collect(run, gt)
    rho = spearman([r["quality"] for r in rows], [r["miou"] for r in rows])
    assert rho >= 0.3, rho
