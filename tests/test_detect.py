"""Stage 1.1 logic with fake models of known similarities (seed 003 §3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import blocks_image
from fakes import FakeClip, FakeSam
from ovlabel.config import DetectConfig
from ovlabel.errors import OvlabelError
from ovlabel.stages.detect import (
    QuerySamWithClip,
    assemble_feature_map,
    crop_voters,
    plan_crops,
    select_points,
    vote_classes,
)
from ovlabel.text import class_text_features
from ovlabel.vocab import load_templates, load_vocabulary

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def make_stage(cfg: DetectConfig, scores=(0.9, 0.5, 0.1)):
    clip, sam = FakeClip(), FakeSam(scores)
    text = class_text_features(clip, load_vocabulary("red,green,blue"), load_templates("fmbseg"), use_cache=False)
    return QuerySamWithClip(clip, sam, text, cfg), clip, sam


# ---- geometry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(120, 160), (5, 4), (8, 600), (600, 8), (1, 1), (97, 131)])
def test_crop_plan_tiles_the_oversampled_image_on_one_patch_grid(h, w):
    cfg = DetectConfig(resolution=64, overlap=0.5, max_aspect=4.0)
    plan = plan_crops(h, w, cfg, input_size=32, patch=8)
    rh, rw = plan.resized
    assert min(rh, rw) == 64 or max(rh, rw) == 64 * 4  # short side reached unless the aspect cap applies
    assert max(rh, rw) <= 64 * 4 + 1
    assert min(rh, rw) >= 32  # never thinner than one crop
    assert plan.padded[0] >= rh and plan.padded[1] >= rw
    assert plan.stride == 16
    covered = np.zeros(plan.padded, bool)
    for y, x in plan.origins:
        assert y % 8 == 0 and x % 8 == 0
        covered[y : y + 32, x : x + 32] = True
    assert covered.all()
    assert plan.valid_patches().sum() >= 1


def test_crop_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(OvlabelError, match="multiple of the CLIP patch size 8"):
        plan_crops(100, 100, DetectConfig(crop_size=36), input_size=32, patch=8)


@pytest.mark.parametrize("field,value", [("overlap", 1.0), ("min_crops", 0), ("resolution", 3), ("points_per_class", 0),
                                         ("min_valid", 1.5)])
def test_bad_detect_config_names_the_value(field, value):
    with pytest.raises(OvlabelError, match=f"{field}={value}"):
        DetectConfig(**{field: value})


# ---- voting ---------------------------------------------------------------------------------------

def test_vote_counts_best_matches_and_applies_min_crops():
    text = torch.eye(3)
    cls = F.normalize(torch.tensor([[1.0, 0.1, 0], [0.9, 0.2, 0], [0, 0, 1], [0.2, 1.0, 0.1], [1, 0, 0.5]]), dim=-1)
    votes, present = vote_classes(cls, text, min_crops=1)
    assert votes.tolist() == [3, 1, 1]
    assert present.tolist() == [0, 1, 2]
    votes, present = vote_classes(cls, text, min_crops=2)
    assert present.tolist() == [0]


def test_presence_needs_more_than_one_crop_by_default():
    # seed 003 §3.2: present if "assigned to more than a predefined number of crops (set to 1)"
    assert DetectConfig().min_crops == 2
    text = torch.eye(2)
    one_vote = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # class 1 wins one crop
    two_votes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # class 1 wins two crops
    assert vote_classes(one_vote, text, DetectConfig().min_crops)[1].tolist() == [0]
    assert vote_classes(two_votes, text, DetectConfig().min_crops)[1].tolist() == [1]


def test_valid_fraction_of_edge_and_corner_crops():
    # 36x36 at resolution 36, 32-px crops at stride 16: origins 0 and 16 per axis, padded to 48x48.
    # Crop (0, 16) covers columns 16..48 of which 16..36 are image: 32*20/1024; the corner crop 20*20/1024.
    plan = plan_crops(36, 36, DetectConfig(resolution=36, overlap=0.5), input_size=32, patch=8)
    assert plan.origins == ((0, 0), (0, 16), (16, 0), (16, 16))
    assert np.allclose(plan.valid_fraction(), [1.0, 0.625, 0.625, 0.390625])
    assert crop_voters(plan, 0.5).tolist() == [True, True, True, False]
    assert crop_voters(plan, 0.0).all()


def test_a_mostly_padding_crop_does_not_vote():
    # 32x40 image, 32-px crops without overlap: crop 1 holds columns 32..40 of the image (green) and 24
    # columns of padding (25 % image). With min_valid 0.5 it does not vote, so green is not present.
    img = np.zeros((32, 40, 3), np.uint8)
    img[:, :32] = RED
    img[:, 32:] = GREEN
    base = dict(resolution=32, overlap=0.0, min_crops=1)
    stage, *_ = make_stage(DetectConfig(**base, min_valid=0.0))
    (res,) = stage.process([img])
    assert res.votes.tolist() == [1, 1, 0] and res.present.tolist() == [0, 1]
    stage, *_ = make_stage(DetectConfig(**base))
    (res,) = stage.process([img])
    assert res.votes.tolist() == [1, 0, 0] and res.present.tolist() == [0]
    assert res.masks.class_index.tolist() == [0]


# ---- dense map and points ---------------------------------------------------------------------------

def test_overlapping_crops_average_into_one_map():
    plan = plan_crops(32, 48, DetectConfig(resolution=32, overlap=0.5), input_size=32, patch=8)
    assert plan.origins == ((0, 0), (0, 16))
    a = torch.zeros(4, 4, 2)
    a[..., 0] = 1.0
    b = torch.zeros(4, 4, 2)
    b[..., 1] = 1.0
    fmap = assemble_feature_map(plan, [(0, a), (1, b)], 2, torch.device("cpu"))
    assert fmap.shape == (4, 6, 2)
    assert torch.allclose(fmap[:, :2], torch.tensor([1.0, 0.0]).expand(4, 2, 2))
    assert torch.allclose(fmap[:, 2:4], F.normalize(torch.tensor([1.0, 1.0]), dim=0).expand(4, 2, 2))
    assert torch.allclose(fmap[:, 4:], torch.tensor([0.0, 1.0]).expand(4, 2, 2))


def test_select_points_takes_the_top_k_valid_patches_in_original_pixels():
    # 40x80 image, over-sampled x2.1 -> 84x168, padded to 96x176 by 32-px crops at stride 16: a 12x22 grid
    # of 8-px patches whose rows >= 10 and columns >= 21 lie on padding.
    plan = plan_crops(40, 80, DetectConfig(resolution=84, overlap=0.5), input_size=32, patch=8)
    assert plan.resized == (84, 168) and plan.padded == (96, 176)
    gh, gw = plan.grid
    sim = torch.zeros(gh, gw)
    ranked = [(0, 0), (3, 7), (9, 19), (5, 5), (2, 11), (1, 1)]  # best first
    for rank, (y, x) in enumerate(ranked):
        sim[y, x] = 1.0 - 0.1 * rank
    sim[11, 3] = 5.0  # best of all, but on the padding (rows >= 10): must be ignored
    fmap = torch.stack([sim, torch.zeros_like(sim)], dim=-1)  # feature = (sim, 0) so fmap @ (1, 0) = sim
    coords, idx = select_points(fmap, plan.valid_patches(), torch.tensor([[1.0, 0.0]]), 5, plan)
    assert idx[0].tolist() == [y * gw + x for y, x in ranked[:5]]
    expected = [((x + 0.5) * 8 / 2.1, (y + 0.5) * 8 / 2.1) for y, x in ranked[:5]]
    assert torch.allclose(coords[0], torch.tensor(expected))


# ---- the stage with fake models -----------------------------------------------------------------

def test_stage_detects_present_colours_and_masks_them():
    stage, clip, sam = make_stage(DetectConfig(resolution=64, overlap=0.5))
    img = blocks_image(64, 128, [RED, BLUE])
    (res,) = stage.process([img])
    assert res.present.tolist() == [0, 2]  # red and blue, never green
    assert res.votes[1] == 0
    ms = res.masks
    assert ms.class_index.tolist() == [0, 2]
    dense = ms.decode()
    assert dense[0][:, :64].all() and not dense[0][:, 64:].any()
    assert dense[1][:, 64:].all() and not dense[1][:, :64].any()
    # the 5 point prompts of each class lie inside that class's region
    for pts, cls in zip(ms.points, (0, 2)):
        assert pts.shape == (5, 2)
        assert ((pts[:, 0] < 64) if cls == 0 else (pts[:, 0] >= 64)).all()
    assert ms.source == ["stage1.1", "stage1.1"]
    assert np.allclose(ms.scores, 0.9)


def test_min_crops_drops_a_class_seen_in_too_few_crops():
    img = blocks_image(64, 256, [RED, RED, RED, BLUE])  # blue wins only the rightmost crops
    stage, *_ = make_stage(DetectConfig(resolution=64, overlap=0.5, min_crops=1))
    (res,) = stage.process([img])
    n_blue = int(res.votes[2])
    assert 1 <= n_blue < int(res.votes[0])
    assert res.present.tolist() == [0, 2]
    stage, *_ = make_stage(DetectConfig(resolution=64, overlap=0.5, min_crops=n_blue + 1))
    (res,) = stage.process([img])
    assert res.present.tolist() == [0]
    assert res.masks.class_index.tolist() == [0]


def test_each_class_keeps_its_highest_confidence_candidate():
    # FakeSam candidates: (colour region, whole image, one pixel); make "whole image" the most confident.
    stage, _, sam = make_stage(DetectConfig(resolution=64), scores=(0.2, 0.95, 0.4))
    (res,) = stage.process([blocks_image(64, 128, [RED, BLUE])])
    assert np.allclose(res.masks.scores, 0.95)
    assert (res.masks.areas == 64 * 128).all()


def test_clip_batches_span_images_and_sam_encodes_each_image_once():
    cfg = DetectConfig(resolution=64, overlap=0.5, clip_batch_size=16)
    stage, clip, sam = make_stage(cfg)
    images = [blocks_image(64, 128, [RED, BLUE]), blocks_image(64, 64, [GREEN]), blocks_image(96, 64, [BLUE, RED])]
    results = stage.process(images)
    crops = sum(len(stage.plan(*im.shape[:2]).origins) for im in images)
    assert clip.stats["clip_crops"] == crops
    assert clip.stats["clip_image_batches"] == -(-crops // 16)
    assert clip.batch_sizes[0] == 16  # a batch mixes crops of several images
    assert sam.stats["sam_image_encoder_passes"] == 3
    assert sam.stats["sam_decoder_calls"] == 3  # one decoder call per image, all classes batched
    assert [r.present.tolist() for r in results] == [[0, 2], [1], [0, 2]]
    # every present class of an image went into the same decoder call
    assert [p.shape[0] for p in sam.prompts] == [2, 1, 2]
