"""Stage 2 training data: patch labels by area coverage, ignored patches, the run's own paint policy."""

from __future__ import annotations

import numpy as np
import pytest

from ovlabel.errors import OvlabelError
from ovlabel.masks import MaskSet
from ovlabel.stages.trainset import load_train_set, patch_labels
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


def _overlap_run(tmp_path, paint):
    """A complete run with one 28x28 image: a whole-image mask (class 0, score 0.9, Stage 1.2) and a
    top-left 14x14 mask (class 1, score 0.5, Stage 1.1), painted with ``paint`` (None: no merge settings)."""
    import hashlib
    import json

    from PIL import Image

    from ovlabel.artifacts import RunLayout, write_manifest
    from ovlabel.dataset import write_masks_and_coco

    img = tmp_path / "imgs" / "a.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(img)
    big, small = np.ones((1, 28, 28), bool), np.zeros((1, 28, 28), bool)
    small[0, :14, :14] = True
    ms = MaskSet.concat([MaskSet.from_dense(big, [0], [0.9], "stage1.2"),
                         MaskSet.from_dense(small, [1], [0.5], "stage1.1")])
    layout = RunLayout(tmp_path / f"run-{paint}")
    rows = [{"image_id": 1, "file": "a.png", "sha256": hashlib.sha256(img.read_bytes()).hexdigest(), "width": 28,
             "height": 28, "status": "ok", "reason": None, "label_file": "labels/a.png", "num_masks": 2}]
    write_masks_and_coco(layout, rows, [(1, ms)], ["wall", "cat"], {})
    write_manifest(layout.manifest, rows)
    settings = {"stages": ["1.1", "1.2"], "vocabulary": {"source": "list", "classes": ["wall", "cat"]},
                "templates": {"name": "fmbseg", "templates": ["a photo of a {}."]}}
    if paint:
        settings["merge"] = {"stage12_ratio": 0.2, "seed": 0, "paint": paint}
    layout.run_json.write_text(json.dumps({"status": "complete", "settings": settings,
                                           "input": {"root": str(img.parent)}}))
    return layout.root


@pytest.mark.parametrize("paint,labels", [(None, [0, 0, 0, 0]), ("score", [0, 0, 0, 0]),
                                          ("small-on-top", [1, 0, 0, 0]), ("stage1.1-first", [1, 0, 0, 0])])
def test_train_set_paints_overlaps_with_the_runs_policy(tmp_path, paint, labels):
    # 2x2 patches of 14 px: the cat mask covers exactly patch 0; "score" lets the 0.9 wall mask win it
    ts = load_train_set(_overlap_run(tmp_path, paint), resolution=28, patch=14, max_aspect=2.0, min_labelled=0.5)
    assert ts.images[0].labels.tolist() == labels


def test_train_set_from_a_run(tmp_path):
    gt = write_images(tmp_path / "imgs", 4, seed=0)
    gt["blank.png"] = np.full((112, 112), 255, np.uint8)  # an image whose masks label nothing
    from PIL import Image

    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp_path / "imgs" / "blank.png")
    run = write_run(tmp_path / "run", tmp_path / "imgs", gt)
    ts = load_train_set(run, resolution=112, patch=14, max_aspect=2.0, min_labelled=0.5)
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
        load_train_set(run, 112, 14, 2.0, 0.5)
