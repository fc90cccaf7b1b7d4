"""Stage 1.2 (seed 003 §3.2; seed 002 §3.1, A.1, A.5): automatic masks on a shared embedding, the two
classifiers and their ensemble, and the merge with Stage 1.1, with fake models of known behaviour."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from conftest import blocks_image
from fakes import FakeClip, FakeSam
from ovlabel.config import AutoMaskConfig, ClassifyConfig, DetectConfig, MergeConfig, PseudoLabelConfig, parse_stages
from ovlabel.errors import OvlabelError
from ovlabel.masks import SOURCE_STAGE_1_1, SOURCE_STAGE_1_2, MaskSet
from ovlabel.merge import merge_stages, merged_count, sample_stage12
from ovlabel.stages import automask, classify
from ovlabel.stages.detect import plan_crops
from ovlabel.stages.stage1 import Stage1
from ovlabel.text import class_text_features
from ovlabel.vocab import load_templates, load_vocabulary

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SEG = AutoMaskConfig(points_per_side=8, points_per_batch=16, min_area=0.0)
DET = DetectConfig(resolution=64, min_crops=1)


def make_stage1(classifier="fmbseg", automask_cfg=SEG, detect=DET, scores=(0.9, 0.5, 0.1), lam=0.7):
    clip, sam = FakeClip(), FakeSam(scores)
    vocab = load_vocabulary("red,green,blue")
    text = class_text_features(clip, vocab, load_templates("fmbseg"), use_cache=False)
    crop_text = class_text_features(clip, vocab, load_templates("vild"), use_cache=False)
    cfg = ClassifyConfig(classifier=classifier, ensemble_lambda=lam)
    return Stage1(clip, sam, text, detect, automask_cfg, cfg, crop_text), clip, sam


def three_blocks(h=64, w=96):
    return blocks_image(h, w, [RED, GREEN, BLUE])


# ---- automatic masks ------------------------------------------------------------------------------

def test_automatic_masks_find_each_region_once():
    sam = FakeSam()
    img = three_blocks()
    (emb,) = sam.embed([img])
    auto = automask.generate(sam, emb, SEG)
    assert len(auto) == 3  # 64 grid points, 3 candidates each: the duplicates go by NMS, the rest by IoU
    assert sam.stats["sam_decoder_calls"] == 4 and sam.stats["sam_prompts"] == 64
    regions = {tuple(img[m.numpy()][0]) for m in auto.masks}
    assert regions == {RED, GREEN, BLUE}
    for m in auto.masks:
        colour = img[m.numpy()][0]
        assert (m.numpy() == (img == colour).all(-1)).all()
    assert torch.all(auto.stability == 1.0) and torch.all(auto.pred_iou == 0.9)


def test_automatic_mask_filters_predicted_iou_stability_and_area():
    sam = FakeSam(scores=(0.9, 0.95, 0.1))  # the whole-image mask is the most confident candidate
    (emb,) = sam.embed([three_blocks()])
    keep_all = automask.generate(sam, emb, AutoMaskConfig(points_per_side=4, min_area=0.0, max_area=1.0))
    assert len(keep_all) == 4 and keep_all.masks[0].all()  # best predicted IoU first
    no_whole = automask.generate(sam, emb, AutoMaskConfig(points_per_side=4, min_area=0.0, max_area=0.9))
    assert len(no_whole) == 3 and not any(m.all() for m in no_whole.masks)
    assert len(automask.generate(sam, emb, AutoMaskConfig(points_per_side=4, pred_iou_thresh=0.96))) == 0
    assert len(automask.generate(sam, emb, AutoMaskConfig(points_per_side=4, min_area=0.4, max_area=0.9))) == 0


def test_stability_score_is_the_iou_of_the_two_offset_thresholds():
    logits = torch.tensor([[[-2.0, -0.5, 0.5, 2.0]]])
    # > +1: 1 pixel; > -1: 3 pixels
    assert automask.stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)


def test_small_region_cleanup_fills_holes_and_drops_islands():
    m = torch.zeros(1, 20, 20, dtype=torch.bool)
    m[0, 2:12, 2:12] = True
    m[0, 5, 5] = False  # a one-pixel hole
    m[0, 18, 18] = True  # a one-pixel island
    cleaned, keep = automask.clean_regions(m, min_area=4, nms_thresh=0.7)
    assert keep.tolist() == [0]
    expected = torch.zeros(20, 20, dtype=torch.bool)
    expected[2:12, 2:12] = True
    assert torch.equal(cleaned[0], expected)


# ---- classifiers ----------------------------------------------------------------------------------

def test_mask_coverage_is_the_fraction_of_each_patch_covered():
    plan = plan_crops(32, 32, DetectConfig(resolution=32), input_size=32, patch=8)
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[0, 8:16, 8:16] = True  # exactly patch (1, 1)
    m[1, 0:4, 0:8] = True  # half of patch (0, 0)
    cov = classify.mask_coverage(m, plan)
    assert cov.shape == (2, 4, 4)
    assert cov[0, 1, 1] == 1 and cov[0].sum() == 1
    assert cov[1, 0, 0] == pytest.approx(0.5) and cov[1].sum() == pytest.approx(0.5)


def test_ensemble_is_the_renormalised_geometric_mean():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.1, 0.3, 0.6]])
    lam = 0.6
    raw = p ** (1 - lam) * q**lam
    assert torch.allclose(classify.ensemble(p, q, lam), raw / raw.sum())
    assert torch.allclose(classify.ensemble(p, q, 0.0), p)
    assert torch.allclose(classify.ensemble(p, q, 1.0), q)


def test_masked_crop_is_stretched_to_clips_input_as_ovseg_does():
    assert ClassifyConfig().crop_shape == "stretch"
    img = np.full((40, 60, 3), 200, np.uint8)
    img[10:30, 25:30] = 100  # the right half of the object's box is darker
    m = torch.zeros(1, 40, 60, dtype=torch.bool)
    m[0, 10:30, 20:30] = True  # a 20 x 10 (h x w) box
    crop = classify.masked_crops(img, m, np.array([[20, 10, 30, 30]], np.float32), 20, fill=(7, 7, 7))[0]
    assert crop.shape == (20, 20, 3) and not (crop == 7).any()  # no padding: the box fills the input
    assert (crop[:, :6] == 200).all() and (crop[:, 14:] == 100).all()  # each 5-px half now 10 px wide: stretched


def test_masked_crop_blanks_the_background_and_pads_to_keep_the_aspect_ratio():
    img = np.full((40, 60, 3), 200, np.uint8)
    m = torch.zeros(1, 40, 60, dtype=torch.bool)
    m[0, 10:30, 20:30] = True  # a 20 x 10 (h x w) box
    m[0, 10, 20] = False  # one background pixel inside the box
    crop = classify.masked_crops(img, m, np.array([[20, 10, 30, 30]], np.float32), 20, fill=(7, 7, 7), shape="pad")[0]
    assert crop.shape == (20, 20, 3)
    assert (crop[:, :4] == 7).all() and (crop[:, -4:] == 7).all()  # padded left and right to a square
    assert (crop[2:-2, 7:13] == 200).all()  # the object, undistorted in the middle


@pytest.mark.parametrize("classifier", ["fmbseg", "ovseg", "ensemble"])
def test_each_classifier_picks_the_colour_of_the_mask(classifier):
    stage, clip, _ = make_stage1(classifier)
    (res,) = stage.process([three_blocks()], [{"1.2"}])
    ms = res.masks["1.2"]
    assert len(ms) == 3 and set(ms.source) == {SOURCE_STAGE_1_2}
    dense = ms.decode()
    img = three_blocks()
    for i in range(len(ms)):
        colour = tuple(img[dense[i]][0])
        assert ms.class_index[i] == [RED, GREEN, BLUE].index(colour)
        classes, probs = ms.topk[i]
        assert classes[0] == ms.class_index[i] and len(classes) == 3
        assert np.all(np.diff(probs) <= 0) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    crops = clip.stats["clip_crops"]
    base = len(stage.detect.plan(64, 96).origins)
    assert crops == base + (3 if classifier != "fmbseg" else 0)  # FMbSeg needs no extra CLIP pass


def test_masks_are_never_given_a_class_that_was_not_detected():
    img = blocks_image(64, 96, [RED, GREEN])
    img[28:44, 40:56] = BLUE  # a blue square that wins no crop (less than a quarter of any crop)
    stage, _, _ = make_stage1("ensemble", detect=DetectConfig(resolution=64, min_crops=1, overlap=0.0))
    (res,) = stage.process([img], [{"1.2"}])
    assert res.present.tolist() == [0, 1]
    ms = res.masks["1.2"]
    blue = ms.decode()[:, 36, 48]
    assert blue.any(), "the blue square has a mask"
    assert set(ms.class_index.tolist()) <= {0, 1}
    assert all(set(c.tolist()) <= {0, 1} for c, _ in ms.topk)


def test_nothing_detected_means_no_stage12_masks():
    stage, _, sam = make_stage1(detect=DetectConfig(resolution=64, min_crops=10**6))
    (res,) = stage.process([three_blocks()], [{"1.2"}])
    assert len(res.masks["1.2"]) == 0 and sam.stats["sam_prompts"] == 0


def test_sam_image_encoder_runs_once_per_image_for_both_stages():
    stage, clip, sam = make_stage1("ensemble")
    images = [three_blocks(), blocks_image(48, 48, [GREEN, BLUE]), three_blocks(80, 40)]
    results = stage.process(images, [{"1.1", "1.2"}] * 3)
    assert sam.stats["sam_image_encoder_passes"] == 3
    assert all(len(r.masks["1.1"]) and len(r.masks["1.2"]) for r in results)
    assert {s for r in results for s in r.masks["1.1"].source} == {SOURCE_STAGE_1_1}


# ---- merging --------------------------------------------------------------------------------------

def _masks(n: int, source: str, h=8, w=8) -> MaskSet:
    dense = np.zeros((n, h, w), bool)
    for i in range(n):
        dense[i, i % h, : 1 + i % w] = True
    return MaskSet.from_dense(dense, np.arange(n) % 3, np.linspace(0.5, 0.9, n), source)


def test_stage12_sampling_honours_the_ratio_and_is_deterministic():
    parts = {"1.1": _masks(2, SOURCE_STAGE_1_1), "1.2": _masks(20, SOURCE_STAGE_1_2)}
    sha = "ab" * 32
    cfg = MergeConfig(stage12_ratio=0.25, seed=3)
    merged = merge_stages(parts, sha, cfg)
    assert len(merged) == 2 + 5 == merged_count({"1.1": 2, "1.2": 20}, cfg)
    assert merged.source[:2] == [SOURCE_STAGE_1_1] * 2  # Stage 1.1 first, all of it
    again = merge_stages(parts, sha, cfg)
    assert merged.rles == again.rles
    kept = sample_stage12(20, sha, cfg)
    assert list(kept) == sorted(kept) and len(set(kept)) == 5
    others = {tuple(sample_stage12(20, hashlib.sha256(bytes([i])).hexdigest(), cfg)) for i in range(10)}
    assert len(others) > 1  # the sample depends on the image
    assert tuple(sample_stage12(20, sha, MergeConfig(stage12_ratio=0.25, seed=4))) != tuple(kept)
    assert len(merge_stages(parts, sha, MergeConfig(stage12_ratio=0.0))) == 2
    assert len(merge_stages(parts, sha, MergeConfig(stage12_ratio=1.0))) == 22


def test_paint_policies_decide_who_wins_overlaps():
    big = np.ones((1, 4, 4), bool)
    small = np.zeros((1, 4, 4), bool)
    small[0, :2, :2] = True
    a = MaskSet.from_dense(big, [0], [0.9], SOURCE_STAGE_1_1)
    b = MaskSet.from_dense(small, [1], [0.5], SOURCE_STAGE_1_2)
    both = MaskSet.concat([a, b])
    assert both.label_map(4, 4, policy="score")[0, 0] == 0
    assert both.label_map(4, 4, policy="stage1.1-first")[0, 0] == 0
    assert both.label_map(4, 4, policy="small-on-top")[0, 0] == 1
    b.scores[:] = 0.95
    both = MaskSet.concat([a, b])
    assert both.label_map(4, 4, policy="score")[0, 0] == 1
    assert both.label_map(4, 4, policy="stage1.1-first")[0, 0] == 0


# ---- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ClassifyConfig(classifier="clip"), "classifier='clip' is invalid: expected fmbseg or ovseg or ensemble"),
        (lambda: ClassifyConfig(ensemble_lambda=1.5), "ensemble_lambda=1.5"),
        (lambda: AutoMaskConfig(min_area=0.5, max_area=0.2), "max_area=0.2"),
        (lambda: AutoMaskConfig(points_per_side=0), "points_per_side=0"),
        (lambda: MergeConfig(stage12_ratio=2), "stage12_ratio=2"),
        (lambda: MergeConfig(paint="random"), "paint='random'"),
        (lambda: PseudoLabelConfig(stages="1.3"), "stages='1.3' is invalid"),
    ],
)
def test_bad_stage12_options_name_the_value(make, message):
    with pytest.raises(OvlabelError, match=message.replace("(", r"\(").replace("?", r"\?")):
        make()


def test_stages_parse_in_canonical_order():
    assert parse_stages("1.2, 1.1") == ("1.1", "1.2")
    assert parse_stages("1.2") == ("1.2",)
