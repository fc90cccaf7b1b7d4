"""mIoU scoring with mmsegmentation's IoUMetric semantics, ground-truth layouts, class matching, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import save
from ovlabel.cli import app
from ovlabel.config import EvalConfig
from ovlabel.errors import OvlabelError
from ovlabel.evaluate.layouts import (
    cityscapes_lut,
    coco_stuff_lut,
    load_ground_truth,
    reduce_zero_label_lut,
    stem_key,
)
from ovlabel.evaluate.matching import ClassList, match_classes
from ovlabel.evaluate.metrics import ConfusionMatrix
from ovlabel.evaluate.run import evaluate
from ovlabel.protocols import PROTOCOLS, get_protocol
from ovlabel.vocab import load_vocabulary

runner = CliRunner()


def mmseg_reference(pairs, num_classes, ignore_index=255):
    """mmsegmentation's IoUMetric, transcribed: per-image torch.histc areas, summed, then divided."""
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for pred, label in pairs:
        pred, label = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64))
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        hist = lambda x: torch.histc(x.double(), bins=num_classes, min=0, max=num_classes - 1)
        ai, ap, al = hist(intersect), hist(pred), hist(label)
        for t, v in zip(totals, (ai, ap + al - ai, ap, al)):
            t += v
    inter, union, _, label = totals
    iou, acc = (inter / union).numpy(), (inter / label).numpy()
    return iou, acc, float(inter.sum() / label.sum())


def scores_of(pairs, k):
    cm = ConfusionMatrix(k)
    for pred, gt in pairs:
        cm.update(pred, gt)
    return cm.scores()


def test_iou_matches_a_hand_computed_case():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 255], [2, 0, 1, 2]], np.uint8)
    s = scores_of([(pred, gt)], 3)
    # class 0: intersect 3, pred 4, label 4 -> IoU 3/5; class 1: 3, 4, 4 -> 3/5; class 2: 1, 1, 2 -> 1/2.
    # The two GT-255 pixels are ignored (their predictions 1 and 2 count nowhere); the prediction 255 at a
    # class-1 pixel is a miss that no class's predicted area includes.
    np.testing.assert_allclose(s.iou, [0.6, 0.6, 0.5])
    np.testing.assert_allclose(s.acc, [0.75, 0.75, 0.5])
    np.testing.assert_allclose(s.union, [5, 5, 2])
    assert s.aacc == pytest.approx(0.7)
    assert s.miou == pytest.approx(1.7 / 3) and s.macc == pytest.approx(2.0 / 3)


def test_agrees_with_mmseg_histc_on_random_maps_with_ignore_and_out_of_range_values():
    rng = np.random.default_rng(0)
    k = 7
    pairs = []
    for shape in [(13, 17), (8, 5), (31, 2)]:
        gt = rng.integers(0, k + 2, shape).astype(np.uint8)  # values k, k+1: outside the class list
        gt[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, k + 1, shape).astype(np.uint8)
        pred[rng.random(shape) < 0.1] = 255
        pairs.append((pred, gt))
    iou, acc, aacc = mmseg_reference(pairs, k)
    s = scores_of(pairs, k)
    np.testing.assert_allclose(s.iou, iou)
    np.testing.assert_allclose(s.acc, acc)
    assert s.aacc == pytest.approx(aacc)


def test_ignore_index_pixels_count_nowhere():
    gt = np.array([[255, 255], [1, 1]], np.uint8)
    s_wrong = scores_of([(np.array([[0, 0], [1, 1]], np.uint8), gt)], 2)
    s_right = scores_of([(np.array([[1, 1], [1, 1]], np.uint8), gt)], 2)
    for s in (s_wrong, s_right):
        assert s.iou[1] == 1.0 and s.aacc == 1.0 and s.pred_area[0] == 0
        assert math.isnan(s.iou[0])


def test_class_absent_from_both_is_nan_and_left_out_of_the_means():
    gt = np.array([[0, 0, 2, 2]], np.uint8)
    pred = np.array([[0, 2, 2, 2]], np.uint8)
    s = scores_of([(pred, gt)], 3)
    assert math.isnan(s.iou[1]) and math.isnan(s.acc[1])
    assert s.iou[0] == pytest.approx(0.5) and s.iou[2] == pytest.approx(2 / 3)
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_empty_prediction_scores_zero():
    gt = np.array([[0, 1], [1, 255]], np.uint8)
    s = scores_of([(np.full((2, 2), 255, np.uint8), gt)], 2)
    np.testing.assert_array_equal(s.iou, [0.0, 0.0])
    assert s.pred_area.sum() == 0 and s.aacc == 0.0 and s.miou == 0.0


def test_dataset_accumulation_differs_from_per_image_average_and_is_what_is_reported(tmp_path):
    big_gt = np.ones((10, 10), np.uint8)
    big_pred = np.ones((10, 10), np.uint8)  # per-image mIoU 1 (class 0 absent: nan)
    small_gt = np.ones((2, 2), np.uint8)
    small_pred = np.zeros((2, 2), np.uint8)  # per-image mIoU 0
    per_image = np.mean([scores_of([p], 2).miou for p in [(big_pred, big_gt), (small_pred, small_gt)]])
    dataset = scores_of([(big_pred, big_gt), (small_pred, small_gt)], 2)
    assert per_image == pytest.approx(0.5)
    assert dataset.iou[1] == pytest.approx(100 / 104) and dataset.iou[0] == 0.0
    assert dataset.miou == pytest.approx(50 / 104)
    # the command reports the accumulated value
    for name, (p, g) in {"big": (big_pred, big_gt), "small": (small_pred, small_gt)}.items():
        save(tmp_path / "pred" / f"{name}.png", p)
        save(tmp_path / "gt" / f"{name}.png", g)
    res = runner.invoke(app, ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--gt-classes", "a,b", "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "pred-eval" / "folder-gt.json").read_text())
    assert doc["summary"]["mIoU"] == pytest.approx(100 * 50 / 104)
    assert f"{100 * 50 / 104:.2f}" in res.output


def test_reduce_zero_label_follows_mmseg():
    lut = reduce_zero_label_lut(np.arange(256, dtype=np.uint8))
    assert lut[0] == 255 and lut[1] == 0 and lut[150] == 149 and lut[254] == 253 and lut[255] == 255
    gt = lut[np.array([[0, 1], [2, 255]], np.uint8)]
    np.testing.assert_array_equal(gt, [[255, 0], [1, 255]])


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    lut = cityscapes_lut()
    ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    np.testing.assert_array_equal(lut[ids], np.arange(19))
    for ignored in [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255]:
        assert lut[ignored] == 255
    # a Cityscapes tree is detected; predictions named after the leftImg8bit images are paired by name
    label_ids = np.array([[7, 7, 26, 26], [0, 24, 24, 33]], np.uint8)
    save(tmp_path / "cs" / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png", label_ids)
    save(tmp_path / "cs" / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_color.png", np.zeros((2, 4, 3), np.uint8))
    gt = load_ground_truth(tmp_path / "cs")
    assert gt.layout == "cityscapes" and list(gt.files) == ["bonn/bonn_000000_000019"]
    pred = np.array([[0, 0, 13, 13], [5, 11, 11, 17]], np.uint8)  # last pixel wrong, first of row 2 ignored
    save(tmp_path / "pred" / "bonn_000000_000019_leftImg8bit.png", pred)
    res = evaluate(tmp_path / "pred", tmp_path / "cs", EvalConfig(progress=False))
    s = res.scores
    assert s.iou[0] == 1.0 and s.iou[13] == 1.0 and s.iou[11] == 1.0 and s.iou[18] == 0.0 and s.iou[17] == 0.0
    assert s.aacc == pytest.approx(6 / 7)


def test_coco_stuff_original_ids_map_to_171_classes():
    lut = coco_stuff_lut()
    assert lut[0] == 0 and lut[10] == 10  # person, fire hydrant
    assert lut[11] == 255 and lut[12] == 11  # COCO id 12 is unused; id 13 (stop sign) is train id 11
    assert lut[89] == 79 and lut[90] == 255  # toothbrush (id 90) is the last thing; id 91 unused
    assert lut[91] == 80 and lut[181] == 170 and lut[255] == 255  # banner .. wood
    names = load_vocabulary("coco-stuff").names
    assert names[79] == "toothbrush" and names[80] == "banner" and len(names) == 171


def test_voc_layout_reads_the_split_and_palette_pngs(tmp_path):
    from PIL import Image

    voc = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")
    for i, name in enumerate(["2007_000001", "2007_000002", "2007_000099"]):
        im = Image.fromarray(np.array([[0, 15], [255, i + 1]], np.uint8), mode="P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, 0)])
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        im.save(voc / "SegmentationClass" / f"{name}.png")
    gt = load_ground_truth(tmp_path / "data")
    assert gt.layout == "voc2012" and sorted(gt.files) == ["2007_000001", "2007_000002"] and gt.root == voc
    save(tmp_path / "pred" / "2007_000001.png", np.array([[0, 15], [0, 1]], np.uint8))
    save(tmp_path / "pred" / "2007_000002.png", np.array([[0, 15], [7, 2]], np.uint8))
    res = evaluate(tmp_path / "pred", tmp_path / "data", EvalConfig(progress=False))
    assert res.gt_classes.names[15] == "person" and len(res.gt_classes) == 21
    assert res.scores.miou == 1.0 and res.scores.aacc == 1.0
    # VOC-20 (SCLIP's PascalVOC20Dataset): background becomes ignore, classes shift down by one
    res20 = evaluate(tmp_path / "pred", tmp_path / "data", EvalConfig(protocol="sclip-voc20", progress=False))
    assert res20.json_path == tmp_path / "pred-eval" / "sclip-voc20.json" and res.json_path.name == "voc2012-val.json"
    assert len(res20.gt_classes) == 20 and res20.reduce_zero_label
    assert res20.scores.label_area.sum() == 4  # the four non-background, non-255 pixels


def test_ade20k_layout_defaults_to_reduce_zero_label(tmp_path):
    ann = tmp_path / "ADEChallengeData2016" / "annotations" / "validation"
    save(ann / "ADE_val_00000001.png", np.array([[0, 1, 3]], np.uint8))
    save(tmp_path / "pred" / "ADE_val_00000001.png", np.array([[9, 0, 2]], np.uint8))
    res = evaluate(tmp_path / "pred", tmp_path, EvalConfig(progress=False))
    assert res.gt.layout == "ade20k" and res.reduce_zero_label and len(res.gt_classes) == 150
    assert res.scores.aacc == 1.0 and res.scores.pred_area[9] == 0  # the GT-0 pixel is ignored


def test_classes_are_matched_by_name_and_unmatched_ones_reported():
    gt = ClassList.from_vocabulary(load_vocabulary("voc-bg"))
    pred = ClassList(("sky", "Potted Plant", "plane"), (("sky",), ("Potted Plant",), ("plane", "aeroplane")), "test")
    m = match_classes(pred, gt)
    assert m.pred_to_gt == (None, gt.names.index("pottedplant"), gt.names.index("aeroplane"))
    assert m.unmatched_pred == ("sky",) and "person" in m.unmatched_gt and "aeroplane" not in m.unmatched_gt
    lut = m.lut(21, unlabeled_as=0)
    assert lut[0] == 21 and lut[1] == 16 and lut[2] == 1 and lut[255] == 0 and lut[3] == 21
    ambiguous = ClassList(("thing",), (("thing", "cat", "dog"),), "test")
    with pytest.raises(OvlabelError, match="several ground-truth classes"):
        match_classes(ambiguous, gt)


def test_eval_of_a_run_matches_classes_by_name_and_counts_unlabeled_as_background(tmp_path):
    from test_refine import make_run

    run = make_run(tmp_path, vocab="person,sky,aeroplane", labels={"a": [[0, 0, 255, 2]], "b": [[1, 1, 1, 255]]})
    save(tmp_path / "gt" / "a.png", np.array([[15, 15, 0, 1]], np.uint8))
    save(tmp_path / "gt" / "b.png", np.array([[0, 0, 0, 0]], np.uint8))
    res = runner.invoke(app, ["eval", str(run), str(tmp_path / "gt"), "--gt-classes", "voc-bg",
                              "--unlabeled-as", "background", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "sky" in res.output  # reported as unmatched
    doc = json.loads((run / "eval" / "folder-gt.json").read_text())
    assert doc["class_matching"]["unmatched_pred"] == ["sky"]
    assert doc["class_matching"]["pred_to_gt"]["person"] == "person"
    per = {c["class"]: c for c in doc["per_class"]}
    assert per["person"]["IoU"] == 100.0 and per["aeroplane"]["IoU"] == 100.0
    # background: GT 5 pixels; predicted background only at a's unlabeled pixel and b's unlabeled pixel
    assert per["background"]["intersection"] == 2 and per["background"]["label_area"] == 5
    assert per["bicycle"]["IoU"] is None  # absent from both: NaN -> null
    assert (run / "eval" / "folder-gt.md").read_text().startswith("# ovlabel eval report")


def test_size_mismatch_is_an_error_unless_nearest_resize_is_asked(tmp_path):
    save(tmp_path / "gt" / "x.png", np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8))
    save(tmp_path / "pred" / "x.png", np.array([[0, 1]], np.uint8))
    base = ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--gt-classes", "a,b", "--no-progress"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "size mismatch" in res.output and "--resize-pred nearest" in res.output
    res = runner.invoke(app, base + ["--resize-pred", "nearest"])
    assert res.exit_code == 0, res.output
    assert "aAcc" in res.output and "100.00" in res.output


def test_missing_predictions_are_an_error_unless_allowed(tmp_path):
    for name in ["a", "b", "c"]:
        save(tmp_path / "gt" / f"{name}.png", np.zeros((2, 2), np.uint8))
    save(tmp_path / "pred" / "a.png", np.zeros((2, 2), np.uint8))
    base = ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--gt-classes", "a,b", "--no-progress"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "2 of 3 ground-truth images have no prediction" in res.output
    res = runner.invoke(app, base + ["--allow-missing", "--report", str(tmp_path / "out" / "r.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "r.json").read_text())
    assert doc["images"]["evaluated"] == 1 and doc["images"]["missing_prediction"] == ["b", "c"]
    assert (tmp_path / "out" / "r.md").exists()
    res = runner.invoke(app, base + ["--allow-missing", "--report", str(tmp_path / "gt" / "r.json")])
    assert res.exit_code == 2 and "inside the ground truth" in res.output


def test_colour_label_maps_are_refused_with_a_reason(tmp_path):
    save(tmp_path / "gt" / "x.png", np.zeros((2, 2, 3), np.uint8))
    save(tmp_path / "pred" / "x.png", np.zeros((2, 2), np.uint8))
    res = runner.invoke(app, ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--gt-classes", "a,b", "--no-progress"])
    assert res.exit_code == 2 and "8-bit single-channel" in res.output


def test_stem_keys_strip_dataset_suffixes():
    assert stem_key("frankfurt/frankfurt_000000_000294_leftImg8bit.png") == "frankfurt/frankfurt_000000_000294"
    assert stem_key("000000000139_labelTrainIds.png") == "000000000139"
    assert stem_key("a.b.png") == "a.b"


def test_protocol_presets_hold_the_published_settings():
    p = get_protocol("sclip-voc21")
    assert (p.short_side, p.window, p.stride, p.bg_threshold, p.vocab, p.background) == (336, 224, 112, 0.1, "voc-bg", "background")
    assert get_protocol("NACLIP-context60").bg_threshold == 0.1
    assert get_protocol("sclip-cityscapes").short_side == 560
    assert get_protocol("sclip-ade20k").reduce_zero_label and get_protocol("sclip-context59").reduce_zero_label
    for name, p in PROTOCOLS.items():
        if p.family == "tcl":
            assert (p.short_side, p.window, p.stride) == (448, 448, 224), name
        assert len(load_vocabulary(p.vocab)) == {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59,
                                                 "coco-stuff": 171, "cityscapes": 19, "ade20k": 150}[p.dataset]
        assert p.sources
    with pytest.raises(OvlabelError, match="known protocols"):
        get_protocol("sclip-voc22")
    out = subprocess.run([sys.executable, "-c", "import sys, ovlabel.protocols; print('numpy' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # segment and eval can read presets for free


def test_coco_stuff_layouts_accept_the_original_and_the_converted_label_maps(tmp_path):
    raw = tmp_path / "raw" / "stuffthingmaps_trainval2017" / "val2017"
    save(raw / "000000000139.png", np.array([[0, 11, 91, 181]], np.uint8))
    conv = tmp_path / "conv" / "annotations" / "val2017"
    save(conv / "000000000139_labelTrainIds.png", np.array([[0, 255, 80, 170]], np.uint8))
    save(tmp_path / "pred" / "000000000139.png", np.array([[0, 5, 80, 170]], np.uint8))
    for root in ["raw", "conv"]:
        gt = load_ground_truth(tmp_path / root)
        assert gt.layout == "coco-stuff" and list(gt.files) == ["000000000139"]
        res = evaluate(tmp_path / "pred", tmp_path / root, EvalConfig(progress=False, report=str(tmp_path / f"{root}.json")))
        assert len(res.gt_classes) == 171 and res.scores.aacc == 1.0 and res.scores.pred_area[5] == 0


def test_pascal_context_layout_and_context59_protocol(tmp_path):
    voc = tmp_path / "VOC2010"
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    save(voc / "SegmentationClassContext" / "2008_000002.png", np.array([[0, 1, 59]], np.uint8))
    save(tmp_path / "pred" / "2008_000002.png", np.array([[0, 1, 59]], np.uint8))
    res60 = evaluate(tmp_path / "pred", tmp_path, EvalConfig(protocol="sclip-context60", progress=False))
    assert res60.gt.layout == "pascal-context" and len(res60.gt_classes) == 60 and res60.scores.aacc == 1.0
    assert res60.unlabeled_as == "background"
    save(tmp_path / "pred59" / "2008_000002.png", np.array([[7, 0, 58]], np.uint8))
    res59 = evaluate(tmp_path / "pred59", tmp_path, EvalConfig(protocol="sclip-context59", progress=False))
    assert len(res59.gt_classes) == 59 and res59.scores.aacc == 1.0 and res59.scores.label_area.sum() == 2
