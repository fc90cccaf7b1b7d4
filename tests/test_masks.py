"""MaskSet (RLE, boxes, paint order) and the artifact files it is stored in."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from ovlabel.artifacts import RunLayout, label_names, part_info, read_masks, read_part, write_part
from ovlabel.dataset import write_masks_and_coco
from ovlabel.masks import MaskSet


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_from_dense_encodes_boxes_areas_and_drops_empty_masks():
    dense = np.stack([rect(10, 20, 2, 5, 3, 9), np.zeros((10, 20), bool), rect(10, 20, 0, 10, 19, 20)])
    ms = MaskSet.from_dense(dense, [4, 5, 6], [0.5, 0.9, 0.7], "stage1.1", points=[np.ones((5, 2))] * 3)
    assert len(ms) == 2
    assert ms.class_index.tolist() == [4, 6]
    assert np.allclose(ms.scores, [0.5, 0.7])
    assert ms.boxes.tolist() == [[3, 2, 9, 5], [19, 0, 20, 10]]  # xyxy pixel edges
    assert ms.areas.tolist() == [18, 10]
    assert np.array_equal(ms.decode(), dense[[0, 2]])
    assert isinstance(ms.rles[0]["counts"], str)


def test_label_map_paints_higher_scores_on_top_and_ties_keep_the_first():
    a, b, c = rect(6, 6, 0, 4, 0, 4), rect(6, 6, 2, 6, 2, 6), rect(6, 6, 0, 6, 0, 1)
    ms = MaskSet.from_dense(np.stack([a, b, c]), [1, 2, 3], [0.8, 0.9, 0.8], "x")
    lm = ms.label_map(6, 6)
    assert lm.dtype == np.uint8
    assert lm[3, 3] == 2  # a and b overlap: b scores higher
    assert lm[0, 0] == 1  # a and c tie: the earlier mask stays on top
    assert lm[0, 5] == 255  # uncovered


def test_filter_and_concat_keep_fields_aligned():
    ms = MaskSet.from_dense(np.stack([rect(4, 4, 0, 1, 0, 1), rect(4, 4, 0, 2, 0, 2), rect(4, 4, 0, 3, 0, 3)]), [0, 1, 2], [0.1, 0.2, 0.3], "s")
    sub = ms.filter(np.array([True, False, True]))
    assert sub.class_index.tolist() == [0, 2] and sub.areas.tolist() == [1, 9]
    both = MaskSet.concat([sub, MaskSet.empty(), ms.filter([1])])
    assert both.class_index.tolist() == [0, 2, 1] and both.areas.tolist() == [1, 9, 4]


def test_part_files_roundtrip(tmp_path):
    ms = MaskSet.from_dense(np.stack([rect(8, 9, 1, 3, 1, 4)]), [7], [0.25], "stage1.1", points=[np.array([[1.5, 2.5]] * 5)])
    path = tmp_path / "p.parquet"
    write_part(path, ms, width=9, height=8)
    back, w, h = read_part(path)
    assert (w, h) == (9, 8) and part_info(path) == (1, 9, 8)
    assert back.rles == ms.rles and back.points[0].tolist() == [[1.5, 2.5]] * 5
    write_part(path, MaskSet.empty(), width=3, height=2)
    empty, w, h = read_part(path)
    assert len(empty) == 0 and (w, h) == (3, 2)


def test_masks_parquet_and_coco_agree_and_load_in_pycocotools(tmp_path):
    layout = RunLayout(tmp_path)
    m1 = MaskSet.from_dense(np.stack([rect(8, 10, 0, 4, 0, 5), rect(8, 10, 4, 8, 5, 10)]), [0, 2], [0.9, 0.6], "stage1.1")
    m2 = MaskSet.from_dense(np.stack([rect(5, 5, 1, 2, 1, 2)]), [1], [0.3], "stage1.1")
    images = [
        {"image_id": 1, "file": "a.jpg", "width": 10, "height": 8},
        {"image_id": 2, "file": "b.jpg", "width": 5, "height": 5},
        {"image_id": 3, "file": "c.jpg", "width": 4, "height": 4},
    ]
    written = write_masks_and_coco(layout, images, iter([(1, m1), (2, m2), (3, MaskSet.empty())]), ["x", "y", "z"], {"v": 1})
    assert written.count == 3 and sorted(written.quality) == [1, 2, 3]
    assert written.quality[3]["unlabeled_fraction"] == 1.0 and written.quality[3]["quality"] == 0.0
    coco = COCO(str(layout.coco))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    anns = coco.loadAnns(coco.getAnnIds())
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert [a["category_id"] for a in anns] == [1, 3, 2]  # class index + 1
    assert anns[1]["bbox"] == [5.0, 4.0, 5.0, 4.0]  # xywh from xyxy (5, 4, 10, 8)
    assert np.array_equal(coco.annToMask(anns[0]).astype(bool), rect(8, 10, 0, 4, 0, 5))
    assert coco.loadCats([3])[0]["name"] == "z"
    back = read_masks(layout.masks)
    assert sorted(back) == [1, 2]
    assert back[1].rles == m1.rles and back[2].class_index.tolist() == [1]
    json.loads(layout.coco.read_text())  # strict JSON


def test_label_names_resolve_collisions():
    names = label_names(["a.jpg", "a.png", "sub/b.tif", "c.webp"])
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "sub/b.tif": "sub/b.png", "c.webp": "c.png"}
