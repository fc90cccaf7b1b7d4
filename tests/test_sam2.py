"""SAM 2 (the optional ``sam2`` extra) behind SamModel's interface: the same numbers as the sam2 package's own
``SAM2ImagePredictor`` on its tiny random variant, and the whole pseudo-label path on one shared embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovlabel.errors import OvlabelError, WeightsUnavailable
from ovlabel.models.registry import parse_model, resolve_models, weights_file

CPU = torch.device("cpu")


def test_sam2_strings_parse_in_the_sam_slot():
    s = parse_model("sam2:hiera_large", "sam")
    assert (s.family, s.arch, s.kind, s.name) == ("sam2", "hiera_large", "pretrained", "sam2:hiera_large/official")
    assert parse_model("sam2:tiny", "sam").name == "sam2:tiny"
    assert resolve_models("tiny", {"sam": "sam2:hiera_tiny/random"})["sam"].kind == "random"
    with pytest.raises(OvlabelError, match="unknown SAM 2 architecture 'hiera_huge'.*hiera_large, hiera_base_plus"):
        parse_model("sam2:hiera_huge", "sam")
    with pytest.raises(OvlabelError, match="is a sam2 model but a clip model"):
        parse_model("sam2:tiny", "clip")


def test_sam2_offline_error_names_the_file_and_the_sam_option(monkeypatch):
    import torch.hub

    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        weights_file(parse_model("sam2:hiera_small", "sam"))
    msg = str(err.value)
    assert "sam2.1_hiera_small.pt" in msg and "--sam sam2:hiera_small/PATH" in msg and "network unreachable" in msg


sam2 = pytest.importorskip("sam2", reason="SAM 2 is the optional extra 'sam2' (see docs/models.md)")


@pytest.fixture(scope="module")
def tiny_sam2():
    from ovlabel.models.sam2 import load_sam2

    return load_sam2(parse_model("sam2:tiny", "sam"), CPU, "fp32")


@pytest.fixture(scope="module")
def predictor(tiny_sam2):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(tiny_sam2.model)
    pred._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # its table is for the 1024 px models
    return pred


def _image(seed=0, h=60, w=80):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("multimask", [True, False])
def test_sam2_wrapper_matches_sam2s_image_predictor(tiny_sam2, predictor, multimask):
    img = _image()
    (emb,) = tiny_sam2.embed([img])
    predictor.set_image(img)
    assert torch.allclose(emb.features, predictor._features["image_embed"], atol=1e-6)
    coords = torch.tensor([[[10.0, 20.0]], [[70.0, 5.0]], [[40.0, 30.0]]])
    labels = torch.ones(3, 1, dtype=torch.int64)
    masks, iou, low = predictor._predict(
        predictor._transforms.transform_coords(coords, normalize=True, orig_hw=img.shape[:2]), labels.int(),
        multimask_output=multimask, return_logits=True,
    )
    ours, ours_iou = tiny_sam2.decode(emb, coords, labels, multimask=multimask)
    assert ours.shape == (3, 3 if multimask else 1, 64, 64)
    assert torch.allclose(ours_iou, iou, atol=1e-5)
    assert torch.allclose(ours.clamp(-32, 32), low, atol=1e-4)  # the predictor returns clamped low-res logits
    best = ours_iou.argmax(1)
    pred = tiny_sam2.predict_points(emb, coords, labels, multimask=multimask)
    assert torch.allclose(pred.low_res_logits[:, 0], ours[torch.arange(3), best], atol=1e-5)
    up = tiny_sam2.upscale(emb, pred.low_res_logits)
    assert up.shape == (3, 60, 80)
    assert (up == (masks[torch.arange(3), best] > 0)).float().mean() > 0.999  # rounding at the threshold only
    assert tiny_sam2.low_res_geometry(emb) == (64, 64, 60 / 64, 80 / 64)


def test_pseudo_label_runs_on_sam2_with_one_shared_embedding(tmp_path):
    from conftest import save
    from ovlabel.config import AutoMaskConfig, PseudoLabelConfig
    from ovlabel.labelling.stage1 import label as run

    images = tmp_path / "images"
    for i in range(2):
        save(images / f"{i}.png", _image(i, 48 + 16 * i, 64))
    cfg = PseudoLabelConfig(
        vocab="red,green,blue", models="tiny", sam="sam2:tiny", progress=False,
        automask=AutoMaskConfig(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0),
    )
    summary = run(images, tmp_path / "run", cfg)
    assert summary.labelled == 2 and not summary.failures
    assert summary.stats["sam_image_encoder_passes"] == 2  # Stage 1.1 and 1.2 on one embedding per image
    assert summary.stats["sam_decoder_calls"] >= 4
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "sam2:tiny" in json.dumps(doc["settings"]["models"])
    import pyarrow.parquet as pq

    sources = set(pq.read_table(tmp_path / "run" / "masks.parquet").column("source").to_pylist())
    assert "stage1.2" in sources
