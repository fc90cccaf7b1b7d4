"""Every stage's CUDA path with the tiny models, and the split SAM decoder on CUDA (``python -m pytest -m gpu``;
skipped without a CUDA device). Timings and full-size figures: benchmarks/gpu.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
CUDA = "cuda"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for name in ("astronaut.jpg", "chelsea.jpg"):
        shutil.copy(SAMPLE / name, root / name)
    return root


@pytest.fixture(scope="module")
def labelled(images, tmp_path_factory) -> Path:
    """A tiny-model pseudo-label run made on the GPU in bf16 (both stages)."""
    from ovlabel.config import AutoMaskConfig, PseudoLabelConfig
    from ovlabel.labelling.stage1 import label as run

    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = PseudoLabelConfig(vocab="voc", models="tiny", device=CUDA, precision="bf16", progress=False,
                            automask=AutoMaskConfig(points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.0))
    summary = run(images, out, cfg)
    assert summary.labelled == 2 and not summary.failures and summary.masks > 0
    assert summary.stats["sam_image_encoder_passes"] == 2
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_split_decoder_on_cuda_matches_the_unfiltered_decoder(precision):
    from ovlabel.models.registry import parse_model
    from ovlabel.models.sam import load_sam

    sam = load_sam(parse_model("sam:tiny", "sam"), torch.device(CUDA), precision)
    rng = np.random.default_rng(0)
    (emb,) = sam.embed([(rng.random((96, 128, 3)) * 255).astype(np.uint8)])
    coords = torch.tensor(rng.random((40, 1, 2)) * [128, 96], dtype=torch.float32)
    labels = torch.ones(40, 1, dtype=torch.int64)
    low, iou = sam.decode(emb, coords, labels)
    assert low.device.type == "cuda" and low.dtype == torch.float32
    thresh = float(iou.median())
    keep, kept, iou2 = sam.decode_filtered(emb, coords, labels, thresh)
    assert torch.equal(keep, iou2 >= thresh) and torch.allclose(iou2, iou, atol=1e-3)
    # cuBLAS may pick other kernels for other batch sizes: equal up to rounding, masks up to a few pixels
    assert ((kept > 0) == (low[keep] > 0)).float().mean() > 0.999


def test_compiled_sam_decoder_on_cuda_matches_eager():
    from ovlabel.models.registry import parse_model
    from ovlabel.models.sam import load_sam

    spec = parse_model("sam:tiny", "sam")
    eager = load_sam(spec, torch.device(CUDA), "fp32")
    fast = load_sam(spec, torch.device(CUDA), "fp32", compile=True)
    rng = np.random.default_rng(1)
    img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    coords = torch.tensor(rng.random((16, 1, 2)) * [80, 64], dtype=torch.float32)
    labels = torch.ones(16, 1, dtype=torch.int64)
    (e1,), (e2,) = eager.embed([img]), fast.embed([img])
    assert torch.allclose(e1.features, e2.features, atol=1e-4)
    (l1, i1), (l2, i2) = eager.decode(e1, coords, labels), fast.decode(e2, coords, labels)
    assert torch.allclose(i1, i2, atol=1e-4) and ((l1 > 0) == (l2 > 0)).float().mean() > 0.999


def test_sam2_pseudo_label_on_cuda(images, tmp_path):
    pytest.importorskip("sam2")
    from ovlabel.config import AutoMaskConfig, PseudoLabelConfig
    from ovlabel.labelling.stage1 import label as run

    cfg = PseudoLabelConfig(vocab="voc", models="tiny", sam="sam2:tiny", device=CUDA, precision="bf16", progress=False,
                            automask=AutoMaskConfig(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    summary = run(images, tmp_path / "run", cfg)
    assert summary.labelled == 2 and not summary.failures and summary.stats["sam_image_encoder_passes"] == 2


@pytest.mark.parametrize("classifier", ["ovseg", "ensemble"])
def test_classify_masks_on_cuda(labelled, tmp_path, classifier):
    from ovlabel.labelling.stage1 import classify_masks

    run_dir = tmp_path / "run"
    shutil.copytree(labelled, run_dir)
    summary = classify_masks(run_dir, {"classify": {"classifier": classifier}, "device": CUDA, "precision": "bf16",
                                       "progress": False})
    assert summary.labelled == 2 and not summary.failures and summary.masks > 0


def test_salience_and_refine_on_cuda(images, tmp_path):
    from ovlabel.config import RefineConfig
    from ovlabel.labelling.refine import refine
    from ovlabel.labelling.salience import salience
    from ovlabel.salience_config import SalienceRunConfig

    s = salience(images, tmp_path / "sal", SalienceRunConfig(vocab="voc", models="tiny", device=CUDA, precision="bf16",
                                                             keep_soft=True, progress=False))
    assert s.labelled == 2 and not s.failures
    r = refine(tmp_path / "sal", tmp_path / "refined", RefineConfig(workers=1, progress=False))
    assert r.refined == 2 and not r.failures and r.soft == 2


def test_train_align_and_segment_on_cuda(labelled, images, tmp_path):
    from ovlabel.config import SegmentConfig, TrainAlignConfig
    from ovlabel.labelling.segment import segment
    from ovlabel.training.align import train

    t = train(labelled, tmp_path / "ckpt", TrainAlignConfig(models="tiny", epochs=1, batch_size=2, device=CUDA,
                                                           precision="bf16", feature_cache="none", progress=False))
    assert t.epochs_done == 1 and t.images == 2 and np.isfinite(t.history[-1]["loss"])
    s = segment(images, tmp_path / "seg", SegmentConfig(classes="voc", checkpoint=str(tmp_path / "ckpt"), device=CUDA,
                                                         precision="bf16", progress=False))
    assert s.labelled == 2 and not s.failures
