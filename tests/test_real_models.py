"""Checks that need real pretrained weights (downloads ~1 GB) or a CUDA device. Skipped by default:

    python -m pytest -m weights    # real CLIP ViT-B/16 + SAM ViT-B on sample_data
    python -m pytest -m gpu        # the tiny pipeline on CUDA with autocast
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ovlabel.config import DetectConfig, PseudoLabelConfig
from ovlabel.labelling.stage1 import label as run

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.mark.weights
def test_real_models_find_the_cat_and_the_astronaut(tmp_path, monkeypatch):
    for var in ("OVLABEL_CACHE", "TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # use the user's real caches and network
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("chelsea.jpg", "astronaut.jpg"):
        (images / name).write_bytes((SAMPLE / name).read_bytes())
    cfg = PseudoLabelConfig(
        vocab="coco-stuff", clip="clip:ViT-B-16/openai", sam="sam:vit_b", detect=DetectConfig(resolution=448), progress=False
    )
    summary = run(images, tmp_path / "run", cfg)
    assert summary.labelled == 2
    from ovlabel.artifacts import read_label_png
    from ovlabel.vocab import load_vocabulary

    names = load_vocabulary("coco-stuff").names
    for file, expected in (("chelsea.png", "cat"), ("astronaut.png", "person")):
        label_map = read_label_png(tmp_path / "run" / "labels" / file)
        labels = {names[i] for i in np.unique(label_map) if i != 255}
        assert expected in labels, (file, sorted(labels))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_tiny_pipeline_on_cuda_matches_shapes_and_records_device(tmp_path, precision):
    cfg = PseudoLabelConfig(vocab="voc", models="tiny", device="cuda", precision=precision, progress=False)
    summary = run(SAMPLE, tmp_path / "run", cfg)
    assert summary.labelled == 4 and not summary.failures
    assert summary.stats["sam_image_encoder_passes"] == 4
