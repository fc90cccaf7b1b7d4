"""Stage 2 training data: patch labels by area coverage, ignored patches, seeded Stage 1.2 subsampling."""

from __future__ import annotations

import numpy as np
import pytest

from ovlabel.errors import OvlabelError
from ovlabel.masks import MaskSet
from ovlabel.stages.trainset import SOURCE_STAGE_1_2, load_train_set, patch_labels, subsample
from scenes import write_images, write_run

U = 255


def test_patch_label_is_the_class_with_the_largest_area():
    # a 4x6 label map, 2x3 patches of 2x2 pixels
    lm = np.array([
        [0, 0, 1, 1, U, U],
        [0, 1, 1, 1, U, 2],
        [3, 3, U, U, 2, 2],
        [3, 4, U, 5, 2, 2],
    ], np.uint8)
    assert patch_labels(lm, (2, 3), 0.5).tolist() == [0, 1, -1, 3, -1, 2]
    # patch (0,0) is a tie 2:2 broken toward class 0; patch (0,2) is 3/4 unlabeled -> ignored at 0.5
    assert patch_labels(lm, (2, 3), 0.25).tolist() == [0, 1, 2, 3, 5, 2]
    # with min_labelled 0 a completely unlabeled patch is still ignored
    assert patch_labels(np.full((4, 4), U, np.uint8), (2, 2), 0.0).tolist() == [-1] * 4


def test_patch_labels_on_uneven_and_tiny_images():
    lm = np.zeros((7, 5), np.uint8)
    lm[:, 3:] = 1
    # rows split 7 pixels into 3 cells (floor(y*3/7)): [0,0,0,1,1,2,2]; cols into 2 cells: [0,0,0,1,1]
    assert patch_labels(lm, (3, 2), 0.5).tolist() == [0, 1, 0, 1, 0, 1]
    tiny = np.array([[4]], np.uint8)
    assert patch_labels(tiny, (2, 3), 0.5).tolist() == [4] * 6


def _mixed(n11: int, n12: int) -> MaskSet:
    m = np.zeros((n11 + n12, 8, 8), bool)
    for i in range(len(m)):
        m[i, i % 8, : i // 8 + 1] = True
    src = ["stage1.1"] * n11 + [SOURCE_STAGE_1_2] * n12
    sets = [MaskSet.from_dense(m[i : i + 1], [i % 3], [0.5], src[i]) for i in range(len(m))]
    return MaskSet.concat(sets)


def test_stage12_subsampling_is_seeded_and_keeps_stage11():
    ms = _mixed(3, 400)
    a = subsample(ms, 0.25, seed=0, sha256="a" * 64)
    assert a.source.count("stage1.1") == 3
    kept = a.source.count(SOURCE_STAGE_1_2)
    assert 70 <= kept <= 130  # ~25 % of 400
    again = subsample(ms, 0.25, seed=0, sha256="a" * 64)
    assert again.rles == a.rles  # same seed and image: same choice, whatever the order images come in
    assert subsample(ms, 0.25, seed=1, sha256="a" * 64).rles != a.rles
    assert subsample(ms, 0.25, seed=0, sha256="b" * 64).rles != a.rles
    assert len(subsample(ms, 1.0, 0, "a" * 64)) == 403
    assert subsample(ms, 0.0, 0, "a" * 64).source == ["stage1.1"] * 3


def test_train_set_from_a_run(tmp_path):
    gt = write_images(tmp_path / "imgs", 4, seed=0)
    gt["blank.png"] = np.full((112, 112), 255, np.uint8)  # an image whose masks label nothing
    from PIL import Image

    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp_path / "imgs" / "blank.png")
    run = write_run(tmp_path / "run", tmp_path / "imgs", gt)
    ts = load_train_set(run, resolution=112, patch=14, max_aspect=2.0, stage12_fraction=1.0, seed=0, min_labelled=0.5)
    assert [im.file for im in ts.images] == sorted(k for k in gt if k != "blank.png")
    assert ts.skipped == [("blank.png", "no masks")]
    assert ts.vocab.names == ["red square", "green disk", "blue stripes", "grey background"]
    assert ts.templates.templates == ("a photo of a {}.",)
    for im in ts.images:
        assert im.grid == (8, 8) and im.path == tmp_path / "imgs" / im.file
        assert np.array_equal(im.labels, patch_labels(gt[im.file], (8, 8), 0.5))
    assert ts.class_counts().sum() == sum((im.labels >= 0).sum() for im in ts.images)
    (run / "run.json").unlink()
    with pytest.raises(OvlabelError, match="not an ovlabel run"):
        load_train_set(run, 112, 14, 2.0, 1.0, 0, 0.5)
