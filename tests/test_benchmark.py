"""``ovlabel benchmark`` end to end on a generated mini dataset in the VOC2012 layout (issue 17, item 3).

Tiny random CLIP and DINOv2 with the colour-segmenting FakeSam (flat-colour images, so its masks cover
whole regions and train-align has labelled patches); the numbers mean nothing, the plumbing is real:
pseudo-label -> train-align -> segment -> eval, resumable, and the table beside the published numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import blocks_image
from fakes import FakeSam
from ovlabel.bench import run_benchmark
from ovlabel.bench.published import PUBLISHED, published_for
from ovlabel.config import BenchmarkConfig
from ovlabel.errors import OvlabelError
from ovlabel.evaluate.layouts import load_ground_truth, split_images
from ovlabel.models.registry import load_model, parse_model

CPU = torch.device("cpu")
COLOURS = [(200, 30, 30), (30, 180, 40), (40, 40, 210), (220, 220, 40)]


def mini_voc(root, n_train=4, n_val=3):
    """VOCdevkit/VOC2012 with flat-colour band images; GT classes 0 (background), 15 and 8 by band."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": []}
    for i in range(n_train + n_val):
        colours = [COLOURS[(i + j) % len(COLOURS)] for j in range(3)]
        img = blocks_image(56, 70, colours)
        gt = np.zeros((56, 70), np.uint8)
        gt[:, 23:46] = 15
        gt[:, 46:] = 8
        gt[:2] = 255  # VOC's "void" border
        sid = f"2008_{i:06d}"
        Image.fromarray(img).save(base / "JPEGImages" / f"{sid}.jpg", quality=98)
        Image.fromarray(gt).save(base / "SegmentationClass" / f"{sid}.png")
        ids["train" if i < n_train else "val"].append(sid)
    for split, names in ids.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def models():
    return {"clip": load_model(parse_model("clip:tiny", "clip"), CPU, "fp32"), "sam": FakeSam(),
            "dinov2": load_model(parse_model("dinov2:tiny", "dinov2"), CPU, "fp32")}


def cfg(**kw) -> BenchmarkConfig:
    # one crop vote makes a class present: these images are a few crops each (FMbSeg's default asks for two)
    loose = Path(__file__).resolve().parent / "data" / "pseudo-label-loose.toml"
    base = dict(protocol="tcl-voc21", models="tiny", epochs=1, resolution=64, points_per_side=4,
                train_resolution=56, device="cpu", progress=False, pseudo_label_config=str(loose))
    return BenchmarkConfig(**(base | kw))


def test_split_images_follow_the_layout(tmp_path):
    root = mini_voc(tmp_path / "data")
    gt = load_ground_truth(root, "voc2012", "val")
    images = split_images(gt)
    assert sorted(images) == ["2008_000004", "2008_000005", "2008_000006"]
    assert all(p.name == f"{k}.jpg" and p.parent.name == "JPEGImages" for k, p in images.items())
    (root / "VOCdevkit/VOC2012/JPEGImages/2008_000005.jpg").unlink()
    with pytest.raises(OvlabelError, match="1 of 3 images .* missing"):
        split_images(gt)


def test_fmbseg_path_end_to_end_resumes_and_writes_the_table(tmp_path, models, capsys):
    root = mini_voc(tmp_path / "data")
    work = tmp_path / "work"
    result = run_benchmark(root, work, cfg(), models)
    err = capsys.readouterr().err
    for step in ("[1/4] pseudo-label", "[2/4] train-align", "[3/4] segment", "[4/4] eval"):
        assert step in err
    # each step is a normal run in the work folder
    for sub in ("pseudo-label", "segment"):
        doc = json.loads((work / sub / "run.json").read_text())
        assert doc["status"] == "complete"
    assert json.loads((work / "pseudo-label/run.json").read_text())["counts"]["labelled"] == 4  # the train split
    assert json.loads((work / "segment/run.json").read_text())["counts"]["labelled"] == 3  # the val split
    assert (work / "align" / "align.safetensors").is_file()
    report = json.loads((work / "eval" / "tcl-voc21.json").read_text())
    assert report["images"]["evaluated"] == 3 and report["protocol"]["name"] == "tcl-voc21"
    assert result.miou == pytest.approx(report["summary"]["mIoU"])
    # the table: the published numbers for VOC-21 with their sources, then ours
    table = json.loads(result.json.read_text())
    methods = [r["method"] for r in table["rows"]]
    assert methods[:-1] == [p.method for p, _ in published_for("voc21")] and methods[-1].startswith("ovlabel")
    fmbseg = next(r for r in table["rows"] if r["method"] == "FMbSeg")
    assert fmbseg["miou"] == 67.73 and "Table 1" in fmbseg["source"]
    md = result.markdown.read_text()
    assert "| FMbSeg | 67.73 |" in md and "tiny random models" in md and "segment --protocol tcl-voc21" in md

    # a second call resumes: nothing is recomputed, the same score comes out
    again = run_benchmark(root, work, cfg(), models)
    err = capsys.readouterr().err
    assert "4 images: 4 labelled (0 new, 4 already done)" in err and "3 images: 3 labelled (0 new, 3 already done)" in err
    assert again.miou == pytest.approx(result.miou)


def test_training_free_path_evaluates_stage1_labels(tmp_path, models):
    root = mini_voc(tmp_path / "data", n_train=1, n_val=2)
    result = run_benchmark(root, tmp_path / "work", cfg(path="training-free"), models)
    doc = json.loads((tmp_path / "work" / "pseudo-label" / "run.json").read_text())
    assert doc["settings"]["vocabulary"]["source"] == "preset:voc-bg" and doc["counts"]["labelled"] == 2
    assert 0.0 <= result.miou <= 100.0 and "training-free" in result.rows[-1]["method"]


def test_published_numbers_cite_their_source():
    assert {p.method for p in PUBLISHED} == {"FMbSeg", "PnP-OVSS + BLIP", "CorrCLIP (ViT-L, SAM 2 masks)"}
    for p in PUBLISHED:
        assert p.source and p.setting and all(0 < v < 100 for v in p.miou.values())
    assert [v for _, v in published_for("ade20k")] == [16.25, 14.2, 30.7]


def test_bad_options_name_the_value(tmp_path):
    with pytest.raises(OvlabelError, match="path='paper'"):
        BenchmarkConfig(path="paper")
    with pytest.raises(OvlabelError, match="unknown protocol 'voc'"):
        run_benchmark(tmp_path, tmp_path / "w", BenchmarkConfig(protocol="voc"))
