"""``segment`` under an evaluation protocol: resize, sliding windows, background prompts and thresholds,
on hand-computed cases (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ovlabel.config import SegmentConfig
from ovlabel.errors import OvlabelError
from ovlabel.stages.segment_infer import (
    SegmentInference,
    decide,
    protocol_size,
    queries,
    resolve,
    sliding_similarities,
    window_boxes,
)
from ovlabel.vocab import load_vocabulary

CKPT = {"resolution": 448, "temperature": 0.07}


def inference(**kw) -> SegmentInference:
    base = dict(protocol=None, resolution=4, window=0, stride=0, background_class=None, background_prompts=None,
                prompt_background=False, bg_threshold=0.0, logit_scale=1.0, area_threshold=0.0)
    return SegmentInference(**(base | kw))


def test_resize_and_windows_follow_mmseg():
    # Resize(scale=(2048, 448), keep_ratio=True): 375x500 -> x 448/375 -> 448 x 597.33 -> 597
    assert protocol_size(375, 500, 448) == (448, 597)
    assert protocol_size(100, 5000, 448) == (41, 2048)  # the long side is capped at 2048
    # slide_inference: stride 224 over 597 columns -> windows at 0 and at 597 - 448 = 149 (moved back)
    assert window_boxes(448, 597, 448, 224) == [(0, 448, 0, 448), (0, 448, 149, 597)]
    assert window_boxes(112, 112, 448, 224) == [(0, 112, 0, 112)]  # a window larger than the image shrinks
    assert len(window_boxes(448, 448, 224, 112)) == 9


def test_overlapping_windows_average_their_similarities():
    image = np.tile(np.arange(6, dtype=np.uint8), (4, 1))[..., None].repeat(3, axis=2)  # pixel value = column
    seen = []

    def similarities(crop):  # one query; the crop's first column value everywhere
        seen.append(crop.shape[:2])
        return torch.full((1, 1, 1), float(crop[0, 0, 0]))

    sim = sliding_similarities(image, inference(resolution=4, window=4, stride=2), similarities)
    assert seen == [(4, 4), (4, 4)]  # windows at columns 0..4 and 2..6
    assert sim[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]  # 0 | (0 + 2) / 2 | 2


def test_default_is_fmbseg_protocol_and_voc_background_is_never_prompted():
    voc_bg = load_vocabulary("voc-bg")
    inf = resolve(SegmentConfig(classes="voc-bg"), voc_bg, CKPT)
    assert (inf.resolution, inf.window, inf.stride) == (448, 448, 224)  # TCL's protocol (seed 003 §4.1)
    assert inf.background_class == 0 and inf.background_prompts == "coco-stuff-stuff"
    assert not inf.prompt_background and inf.bg_threshold == 0 and inf.logit_scale == pytest.approx(1 / 0.07)
    prompted, owner = queries(voc_bg, inf)
    assert "background" not in prompted.names  # the literal word is not a prompt
    assert len(prompted) == 20 + 91 and prompted.names[20] == "banner"  # CS-171's stuff classes stand in
    assert owner[:20].tolist() == list(range(1, 21)) and set(owner[20:].tolist()) == {0}
    # a class list without a background class: nothing added, every query its own class
    plain = resolve(SegmentConfig(classes="voc"), load_vocabulary("voc"), CKPT)
    assert plain.background_class is None and plain.background_prompts is None
    assert queries(load_vocabulary("voc"), plain)[1].tolist() == list(range(20))
    # "none" prompts the background class by its own name (the earlier behaviour)
    lit = resolve(SegmentConfig(classes="voc-bg", background_prompts="none"), voc_bg, CKPT)
    assert lit.prompt_background and queries(voc_bg, lit)[0].names[0] == "background"


def test_protocol_presets_resolve_and_explicit_options_win():
    voc_bg = load_vocabulary("voc-bg")
    sclip = resolve(SegmentConfig(classes="voc-bg", protocol="sclip-voc21"), voc_bg, CKPT)
    assert (sclip.resolution, sclip.window, sclip.stride) == (336, 224, 112)
    assert (sclip.bg_threshold, sclip.logit_scale, sclip.area_threshold) == (0.1, 65.0, 0.1)
    assert sclip.background_prompts == "voc-background-stuff"
    assert queries(voc_bg, sclip)[0].names[20:23] == ["sky", "wall", "tree"]
    tcl = resolve(SegmentConfig(classes="voc-bg", protocol="tcl-voc21"), voc_bg, CKPT)
    assert tcl.bg_threshold == 0.4 and tcl.background_prompts is None and not tcl.prompt_background
    fmb = resolve(SegmentConfig(classes="voc", protocol="fmbseg-voc21"), load_vocabulary("voc"), CKPT)
    assert fmb.background_class is None and fmb.background_prompts == "coco-stuff-stuff"  # -> unlabeled (255)
    assert queries(load_vocabulary("voc"), fmb)[1][20:].tolist() == [255] * 91
    mine = resolve(SegmentConfig(classes="voc-bg", protocol="sclip-voc21", window=0, bg_threshold=0.3), voc_bg, CKPT)
    assert mine.window == 0 and mine.bg_threshold == 0.3 and mine.resolution == 336
    with pytest.raises(OvlabelError, match="unknown protocol 'sclip-voc22'"):
        SegmentConfig(classes="voc", protocol="sclip-voc22")
    with pytest.raises(OvlabelError, match="stride=500"):
        resolve(SegmentConfig(classes="voc", window=448, stride=500), load_vocabulary("voc"), CKPT)
    with pytest.raises(OvlabelError, match="--refine"):
        resolve(SegmentConfig(classes="voc-bg", protocol="sclip-voc21", refine=True), voc_bg, CKPT)


def test_decide_maps_queries_to_classes_and_applies_the_threshold():
    # three queries over a 1x3 image: class 1, class 2, and a background stand-in (owner 0)
    sim = torch.tensor([[[2.0, 1.0, 0.0]], [[0.0, 0.9, 0.0]], [[0.0, 0.0, 3.0]]])
    owner = np.array([1, 2, 0])
    lab, val = decide(sim, owner, inference(background_class=0), 1, 3)
    assert lab.tolist() == [[1, 1, 0]] and val[0].tolist() == pytest.approx([2.0, 1.0, 3.0])
    # threshold 0.5 at logit scale 1: pixel 1 has P = e^1 / (e^1 + e^.9 + e^0) = .43 -> background
    p1 = math.e / (math.e + math.exp(0.9) + 1)
    assert p1 < 0.5
    lab, _ = decide(sim, owner, inference(background_class=0, bg_threshold=0.5), 1, 3)
    assert lab.tolist() == [[1, 0, 0]]
    # no background class in the list: background pixels are unlabeled
    lab, _ = decide(sim, np.array([0, 1, 255]), inference(bg_threshold=0.5), 1, 3)
    assert lab.tolist() == [[0, 255, 255]]


def test_area_rule_drops_small_foreground_classes():
    # 1x10 image: class 1 wins 9 pixels, class 2 one pixel (10 % of the foreground), background stand-in never
    s1 = torch.full((1, 10), 1.0)
    s1[0, 9] = 0.0
    s2 = torch.zeros(1, 10)
    s2[0, 9] = 1.0
    bg = torch.full((1, 10), 0.5)
    sim = torch.stack([s1, s2, bg])
    owner = np.array([1, 2, 0])
    lab, _ = decide(sim, owner, inference(background_class=0, area_threshold=0.05), 1, 10)
    assert lab[0].tolist() == [1] * 9 + [2]  # 10 % > 5 %: kept
    lab, _ = decide(sim, owner, inference(background_class=0, area_threshold=0.1), 1, 10)
    assert lab[0].tolist() == [1] * 9 + [0]  # 10 % is not more than 10 %: its pixel goes to the next best query
