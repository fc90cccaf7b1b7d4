"""`ovlabel export`: each format is loaded back by the library its users load it with, on a run written
with known masks (tests/scenes.py scenes; the masks are the exact class regions, so round trips are exact
up to polygon tolerance)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovlabel.artifacts import (
    RunLayout,
    label_names,
    read_label_png,
    read_manifest,
    read_masks,
    write_class_files,
    write_label_png,
    write_manifest,
)
from ovlabel.config.export import ExportConfig, parse_formats, parse_rename
from ovlabel.dataset import write_masks_and_coco
from ovlabel.errors import OvlabelError
from ovlabel.export import export_run
from ovlabel.export.core import output_stems, split_of
from ovlabel.masks import MaskSet
from scenes import CLASSES, scene

#: per-class mask score (class index -> score), so --min-score has something to cut
SCORES = np.array([0.95, 0.6, 0.8, 0.4], np.float32)
FILES = ["a.jpg", "a.png", "sub/b.png", "c.png", "d.jpg", "e.png", "f.png", "g.jpg"]
ALL = ["yolo-seg", "voc", "mmseg", "hf", "fiftyone", "labelstudio"]


def write_test_run(root: Path) -> Path:
    """Images (a .jpg/.png name collision, a nested file, an image with no label) and a complete run whose
    masks are their exact class regions (one mask per class; the background class has holes)."""
    rng = np.random.default_rng(3)
    images, run = root / "images", root / "run"
    layout = RunLayout(run)
    names = label_names(FILES)
    rows, sets = [], []
    for image_id, name in enumerate(sorted(FILES), start=1):
        img, lab = scene(rng, 48 + 8 * (image_id % 4))
        if name == "c.png":
            lab[:] = 255
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(images / name, **({"quality": 95} if name.endswith(".jpg") else {}))
        present = [c for c in np.unique(lab) if c != 255]
        ms = MaskSet.from_dense(lab[None] == np.array(present, np.uint8)[:, None, None], present,
                                SCORES[present], "stage1.1") if present else MaskSet.empty()
        h, w = lab.shape
        rows.append({"image_id": image_id, "file": name, "sha256": hashlib.sha256((images / name).read_bytes()).hexdigest(),
                     "width": w, "height": h, "status": "ok", "reason": None, "label_file": f"labels/{names[name]}",
                     "num_masks": len(ms)})
        write_label_png(run / rows[-1]["label_file"], ms.label_map(h, w))
        sets.append((image_id, ms))
    rows.append({"image_id": len(rows) + 1, "file": "zz_broken.png", "sha256": None, "width": None, "height": None,
                 "status": "failed", "reason": "not an image", "label_file": None, "num_masks": 0})
    write_masks_and_coco(layout, rows[:-1], sets, CLASSES, {"description": "export test"})
    write_manifest(layout.manifest, rows)
    settings = {"vocabulary": {"classes": CLASSES, "source": "test"}}
    doc = {"status": "complete", "settings_key": "0123456789abcdef", "settings": settings,
           "input": {"path": str(images), "kind": "folder", "root": str(images)}}
    layout.run_json.write_text(json.dumps(doc))
    return run


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (symlinks: their target) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = write_test_run(root)
    summary = export_run(run, root / "out", ALL, ExportConfig(split=0.6))
    return run, root / "out", summary


def _labels(run: Path) -> dict[str, np.ndarray]:
    return {r["file"]: read_label_png(run / r["label_file"]) for r in read_manifest(RunLayout(run).manifest)
            if r["status"] == "ok"}


def _stems(run):
    return output_stems([f for f in _labels(run)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_summary_names_and_split(exported):
    run, out, summary = exported
    assert summary.images == 8 and summary.failed == 1 and summary.classes == CLASSES
    assert all(d["written"] == 8 and d["state"] == "new" for d in summary.formats.values())
    stems = _stems(run)
    assert stems["a.jpg"] == "a.jpg" and stems["a.png"] == "a.png" and stems["sub/b.png"] == "sub__b"
    assert stems["d.jpg"] == "d"
    # a split depends on the content hash and seed only: same for a bigger dataset, differs across seeds
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(400)]
    first = [split_of(s, 0, 0.8) for s in shas]
    assert 0.7 < first.count("train") / 400 < 0.9 and first == [split_of(s, 0, 0.8) for s in shas]
    assert first != [split_of(s, 1, 0.8) for s in shas] and {split_of(s, 5, 1.0) for s in shas} == {"train"}
    for f in ("classes.txt", "id2label.json", "legend.png"):
        assert (out / "voc" / f).exists()


def test_hf_loads_with_datasets(exported):
    datasets = pytest.importorskip("datasets")
    run, out, _ = exported
    ds = datasets.load_dataset(str(out / "hf"))
    labels = _labels(run)
    assert set(ds) == {"train", "validation"}
    assert sum(len(ds[s]) for s in ds) == len(labels)
    for split in ds:
        for row in ds[split]:
            assert row["annotation"].mode == "L"
            np.testing.assert_array_equal(np.asarray(row["annotation"]), labels[row["file"]])
            src = Image.open(run.parent / "images" / row["file"])
            assert row["image"].size == src.size
    assert json.loads((out / "hf" / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(CLASSES)}


def test_yolo_loads_with_supervision_and_round_trips(exported):
    sv = pytest.importorskip("supervision")
    run, out, _ = exported
    root, stems, labels = out / "yolo-seg", _stems(run), _labels(run)
    masks = read_masks(RunLayout(run).masks)
    ids = {r["file"]: r["image_id"] for r in read_manifest(RunLayout(run).manifest)}
    seen = 0
    for split in ("train", "val"):
        ds = sv.DetectionDataset.from_yolo(str(root / "images" / split), str(root / "labels" / split),
                                           str(root / "data.yaml"), force_masks=True)
        assert ds.classes == CLASSES
        for path, _, det in ds:
            name = next(f for f, s in stems.items() if s == Path(path).stem)
            ms = masks.get(ids[name], MaskSet.empty())
            assert len(det) == len(ms)  # one line per mask (parts joined, holes bridged)
            for cls, mask in zip(ms.class_index, ms.decode() if len(ms) else []):
                got = det.mask[det.class_id == cls][0]
                assert _iou(got, mask) > 0.9 and (mask & ~got).sum() <= 0.02 * mask.sum() + 4
            seen += 1
    assert seen == len(labels)
    yaml = (root / "data.yaml").read_text()
    assert "train: images/train" in yaml and "path:" not in yaml.replace("`path`", "")


def test_voc_palette_imagesets_labelmap_and_supervision(exported):
    sv = pytest.importorskip("supervision")
    from ovlabel.export.voc import voc_colormap

    run, out, _ = exported
    root, stems, labels = out / "voc", _stems(run), _labels(run)
    cmap = voc_colormap()
    assert tuple(cmap[255]) == (224, 224, 192) and tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[2]) == (0, 128, 0)
    for name, lab in labels.items():
        with Image.open(root / "SegmentationClass" / f"{stems[name]}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im), lab)
            assert np.array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[:256], cmap)
    sets = root / "ImageSets" / "Segmentation"
    train, val = (sets / "train.txt").read_text().split(), (sets / "val.txt").read_text().split()
    manifest = {r["file"]: r for r in read_manifest(RunLayout(run).manifest) if r["status"] == "ok"}
    assert sorted(train + val) == sorted(stems.values()) == sorted((sets / "trainval.txt").read_text().split())
    assert set(train) == {stems[f] for f, r in manifest.items() if split_of(r["sha256"], 0, 0.6) == "train"}
    lines = (root / "labelmap.txt").read_text().splitlines()
    assert lines[1:] == [f"{n}:{','.join(map(str, cmap[i]))}::" for i, n in enumerate(CLASSES)] + ["background:224,224,192::"]
    ds = sv.DetectionDataset.from_pascal_voc(str(root / "JPEGImages"), str(root / "Annotations"), force_masks=True)
    assert len(ds) == len(labels)
    for path, _, det in ds:
        name = next(f for f, s in stems.items() if s == Path(path).stem)
        for c, cname in enumerate(CLASSES):
            want = labels[name] == c
            got = det.mask[[ds.classes[k] == cname for k in det.class_id]].any(axis=0) if len(det) else want & False
            assert _iou(got, want) > 0.9 if want.any() else not got.any()


def test_mmseg_layout_and_config_parse(exported):
    config = pytest.importorskip("mmengine.config")
    run, out, _ = exported
    root, labels, stems = out / "mmseg", _labels(run), _stems(run)
    cfg = config.Config.fromfile(str(root / "ovlabel_dataset.py"))
    assert list(cfg.metainfo.classes) == CLASSES and len(cfg.metainfo.palette) == 4
    ds = cfg.train_dataloader.dataset
    assert ds.type == "ConcatDataset"  # .jpg and .png images: one BaseSegDataset per suffix
    found = {}
    for _split, dcfg in (("train", ds), ("val", cfg.val_dataloader.dataset)):
        for sub in dcfg.datasets:
            assert Path(sub.data_root) == root and sub.reduce_zero_label is False and sub.ignore_index == 255
            img_dir, ann_dir = root / sub.data_prefix.img_path, root / sub.data_prefix.seg_map_path
            for img in sorted(img_dir.glob(f"*{sub.img_suffix}")):  # BaseSegDataset's pairing rule
                ann = ann_dir / (img.name[: -len(sub.img_suffix)] + sub.seg_map_suffix)
                found[img.name[: -len(sub.img_suffix)]] = read_label_png(ann)
    assert set(found) == set(stems.values())
    for name, lab in labels.items():
        np.testing.assert_array_equal(found[stems[name]], lab)


def test_labelstudio_rle_decodes_to_the_label_maps(exported):
    pytest.importorskip("label_studio_converter")
    import xml.etree.ElementTree as ET

    from ovlabel.export.labelstudio import brush_module

    brush = brush_module()  # label-studio-converter's own brush.py: decode_rle is Label Studio's reference decoder

    run, out, _ = exported
    root, labels = out / "labelstudio", _labels(run)
    tasks = json.loads((root / "tasks.json").read_text())
    assert len(tasks) == len(labels)
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores) and scores[0] == 0.0  # least certain first; the unlabeled image scores 0
    for t in tasks:
        lab = labels[t["data"]["file"]]
        assert t["data"]["image"].startswith("/data/local-files/?d=images/")
        assert (root / t["data"]["image"].split("?d=")[1]).is_file()
        results = t["predictions"][0]["result"]
        assert {r["value"]["brushlabels"][0] for r in results} == {CLASSES[c] for c in np.unique(lab) if c != 255}
        for r in results:
            c = CLASSES.index(r["value"]["brushlabels"][0])
            decoded = brush.decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3]
            np.testing.assert_array_equal(decoded > 0, lab == c)
            assert r["score"] == pytest.approx(float(SCORES[c]), abs=1e-6)
    config = ET.fromstring((root / "label_config.xml").read_text())
    assert [e.get("value") for e in config.iter("Label")] == CLASSES


def test_fiftyone_layout_matches_its_importers(exported):
    from pycocotools.coco import COCO

    run, out, _ = exported
    root, labels, stems = out / "fiftyone", _labels(run), _stems(run)
    assert json.loads((root / "mask_targets.json").read_text()) == {str(i + 1): n for i, n in enumerate(CLASSES)}
    data = {p.relative_to(root / "data").as_posix() for p in (root / "data").rglob("*")}
    masks = {p.relative_to(root / "labels").as_posix() for p in (root / "labels").rglob("*.png")}
    # ImageSegmentationDirectory pairs data/<uuid>.<ext> with labels/<uuid>.<ext>, uuid = path without extension
    assert {os.path.splitext(p)[0] for p in data} == {os.path.splitext(p)[0] for p in masks}
    for name, lab in labels.items():
        got = read_label_png(root / "labels" / f"{stems[name]}.png")
        np.testing.assert_array_equal(got, np.where(lab == 255, 0, lab + 1))
    coco = COCO(str(root / "labels.json"))  # COCODetectionDataset: data/ + labels.json, file_name relative to data/
    assert {im["file_name"] for im in coco.dataset["images"]} == data
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert all("score" in a for a in coco.dataset["annotations"])
    run_coco = COCO(str(run / "coco.json"))
    assert len(coco.dataset["annotations"]) == len(run_coco.dataset["annotations"])


@pytest.mark.fiftyone
def test_fiftyone_imports_the_export(exported):
    fo = pytest.importorskip("fiftyone")
    run, out, _ = exported
    root = str(out / "fiftyone")
    ds = fo.Dataset.from_dir(dataset_dir=root, dataset_type=fo.types.ImageSegmentationDirectory, label_field="semantic")
    ds.default_mask_targets = {int(k): v for k, v in json.load(open(f"{root}/mask_targets.json")).items()}
    ds.save()
    ds.merge_dir(dataset_dir=root, dataset_type=fo.types.COCODetectionDataset, label_types="segmentations",
                 label_field="instances")
    labels, stems = _labels(run), _stems(run)
    assert len(ds) == len(labels)
    assert ds.count("instances.detections") == len(json.load(open(out / "fiftyone" / "labels.json"))["annotations"])
    by_stem = {s: f for f, s in stems.items()}
    for sample in ds:
        lab = labels[by_stem[os.path.splitext(os.path.basename(sample.filepath))[0]]]
        mask = sample.semantic.get_mask() if hasattr(sample.semantic, "get_mask") else sample.semantic.mask
        np.testing.assert_array_equal(mask, np.where(lab == 255, 0, lab + 1))
        for det in (sample.instances.detections if sample.instances else []):
            assert det.confidence == pytest.approx(float(SCORES[CLASSES.index(det.label)]), abs=1e-6)
    assert ds.default_mask_targets[1] == CLASSES[0]


def test_rerun_skips_finished_work_and_gives_the_same_bytes(exported):
    run, out, _ = exported
    before = tree(out)
    again = export_run(run, out, ALL, ExportConfig(split=0.6))
    assert all(d["state"] == "resumed" and d["written"] == 0 and d["skipped"] == 8 for d in again.formats.values())
    assert tree(out) == before


def test_killed_export_resumes_to_the_same_bytes_without_torch(exported, tmp_path):
    run, ref, _ = exported
    out = tmp_path / "out"
    code = ("import sys; from ovlabel.export import export_run, ExportConfig; "
            f"export_run({str(run)!r}, {str(out)!r}, {ALL!r}, ExportConfig(split=0.6)); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "OVLABEL_TEST_KILL_AT": "after:*.txt#4"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert list(out.rglob(".*.tmp"))  # the open hf shard was left behind as a temporary file
    env.pop("OVLABEL_TEST_KILL_AT")
    resumed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "False"  # export never imports torch
    assert tree(out) == tree(ref)


def test_class_selection_rename_and_min_score(exported, tmp_path):
    from pycocotools.coco import COCO

    run, _, _ = exported
    cfg = ExportConfig(split=0.6, classes=("green disk", "red square", "blue stripes"),
                       rename=parse_rename("blue stripes=red square"), min_score=0.7)
    summary = export_run(run, tmp_path / "out", ["mmseg", "fiftyone"], cfg)
    assert summary.classes == ["green disk", "red square"]
    stems = _stems(run)
    for name, lab in _labels(run).items():
        split = "train" if (tmp_path / "out/mmseg/ann_dir/train" / f"{stems[name]}.png").exists() else "val"
        got = read_label_png(tmp_path / "out/mmseg/ann_dir" / split / f"{stems[name]}.png")
        # red (0.95) and blue (0.8, renamed to red) stay as exported class 1; green (0.6 < 0.7) and grey
        # (not selected) become unlabeled
        np.testing.assert_array_equal(got, np.where((lab == 0) | (lab == 2), 1, 255))
    coco = COCO(str(tmp_path / "out/fiftyone/labels.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == ["green disk", "red square"]
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {2}
    assert (tmp_path / "out/mmseg/classes.txt").read_text() == "green disk\nred square\n"


def test_bad_input_names_the_value(exported, tmp_path):
    run, _, _ = exported
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(OvlabelError, match="is not an ovlabel run"):
        export_run(tmp_path / "plain", tmp_path / "o", ["mmseg"])
    with pytest.raises(OvlabelError, match=r"--format 'yolo' is invalid: expected yolo-seg \| voc"):
        parse_formats(["voc,yolo"])
    with pytest.raises(OvlabelError, match="is inside the run"):
        export_run(run, run / "exports", ["mmseg"])
    with pytest.raises(OvlabelError, match=r"--classes: 'cat' is not a class of this run; its classes are: red square"):
        export_run(run, tmp_path / "o", ["mmseg"], ExportConfig(classes=("cat",)))
    for kw, option in (({"split": 0}, "--split 0"), ({"images": "cp"}, "--images 'cp'"),
                       ({"min_score": 2.0}, "--min-score 2.0")):
        with pytest.raises(OvlabelError, match=option):
            ExportConfig(**kw)
    with pytest.raises(OvlabelError, match="--rename 'car'"):
        parse_rename("car")
    # an existing export with other settings is kept unless --overwrite; a foreign folder is never touched
    export_run(run, tmp_path / "o", ["mmseg"], ExportConfig(split=0.6))
    with pytest.raises(OvlabelError, match="--overwrite"):
        export_run(run, tmp_path / "o", ["mmseg"], ExportConfig(split=0.5))
    assert export_run(run, tmp_path / "o", ["mmseg"], ExportConfig(split=0.5, overwrite=True)).formats["mmseg"]["state"] == "replaced"
    (tmp_path / "f" / "voc").mkdir(parents=True)
    (tmp_path / "f" / "voc" / "mine.txt").write_text("keep")
    with pytest.raises(OvlabelError, match="is not an ovlabel export"):
        export_run(run, tmp_path / "f", ["voc"])


def test_moved_images_are_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from ovlabel.cli import app

    run = write_test_run(tmp_path)
    (tmp_path / "images").rename(tmp_path / "moved")
    for mode in ("copy", "link"):
        res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / mode), "-f", "mmseg", "--images", mode])
        assert res.exit_code == 2
        assert "8 of 8 images" in res.output and str(tmp_path / "images" / "a.jpg") in res.output
        assert "--image-root" in res.output
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "o"), "-f", "mmseg,voc", "--images", "link",
                                   "--image-root", str(tmp_path / "moved")])
    assert res.exit_code == 0, res.output
    link = next((tmp_path / "o/voc/JPEGImages").iterdir())
    assert link.is_symlink() and Path(os.readlink(link)).parent == (tmp_path / "moved").resolve()
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "n"), "-f", "hf", "--images", "none"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "u"), "-f", "yolo"])
    assert res.exit_code == 2 and "--format 'yolo' is invalid" in res.output


def test_polygon_keeps_holes_and_joins_parts():
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("supervision")
    from ovlabel.export.polygons import join_parts, mask_to_polygon

    m = np.zeros((60, 80), bool)
    m[5:40, 5:40] = True
    m[15:25, 15:25] = False  # a hole
    m[45:55, 50:75] = True  # a second part
    yy, xx = np.mgrid[:60, :80]
    m |= (yy - 20) ** 2 + (xx - 62) ** 2 < 80  # a third part
    poly = mask_to_polygon(m)
    filled = np.zeros(m.shape, np.uint8)
    cv2.fillPoly(filled, [np.round(poly).astype(np.int32)], 1)  # how Ultralytics rasterises a label
    filled = filled.astype(bool)
    assert not filled[15:25, 15:25].any() and (m & ~filled).sum() == 0
    assert (filled & ~m).sum() <= 40  # only the two thin connecting lines
    square = np.array([[0, 0], [0, 3], [3, 3], [3, 0]])
    joined = join_parts([square, square + [10, 0]])
    assert len(joined) == 4 + 5 + 1 and {tuple(p) for p in joined} == {tuple(p) for p in np.vstack([square, square + [10, 0]])}
    assert mask_to_polygon(np.pad(np.ones((1, 2), bool), 3)) is None  # two pixels: no polygon


def test_write_class_files(tmp_path):
    paths = write_class_files(tmp_path, ["cat", "dog"])
    assert [p.name for p in paths] == ["classes.txt", "id2label.json", "legend.png"]
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\n"
    assert json.loads((tmp_path / "id2label.json").read_text()) == {"0": "cat", "1": "dog"}
    first = (tmp_path / "legend.png").read_bytes()
    with Image.open(tmp_path / "legend.png") as im:
        from ovlabel.overlays import class_color

        arr = np.asarray(im.convert("RGB"))
        assert im.width >= 200 and all((arr == class_color(i)).all(axis=2).any() for i in range(2))
    write_class_files(tmp_path, ["cat", "dog"])
    assert (tmp_path / "legend.png").read_bytes() == first
    with pytest.raises(ValueError):
        write_class_files(tmp_path, ["a\nb"])
    shutil.rmtree(tmp_path)
