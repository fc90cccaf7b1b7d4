"""Ground-truth layouts: where a dataset keeps its validation label maps and how their values become class
indices.

Each layout yields label files keyed by image name and a 256-entry lookup table (uint8) from stored value to
class index (0..K-1), 255 = ignored. ``reduce_zero_label`` (mmseg's ``LoadAnnotations``: 0 -> 255, then
minus one, 254 -> 255) is folded into the same table, so scoring applies one ``lut[label]`` per image.

| layout | what is read | classes | reduce_zero_label |
|---|---|---|---|
| ``voc2012`` | ``SegmentationClass/<id>.png`` for ids in ``ImageSets/Segmentation/<split>.txt`` | ``voc-bg`` (21) | no |
| ``pascal-context`` | ``SegmentationClassContext/<id>.png``, ``ImageSets/SegmentationContext/<split>.txt`` (mmseg's conversion) | ``pascal-context-60`` | no |
| ``ade20k`` | ``annotations/validation/*.png`` (``training`` for split ``train``) | ``ade20k`` (150) | yes |
| ``coco-stuff`` | ``annotations/<split>2017/*_labelTrainIds.png`` (mmseg's conversion, 0..170) or the original ``stuffthingmaps_trainval2017/<split>2017/*.png`` (COCO id - 1, mapped to 0..170) | ``coco-stuff`` (171) | no |
| ``cityscapes`` | ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` mapped to the 19 train ids (else ``*_labelTrainIds.png`` as is) | ``cityscapes`` (19) | no |
| ``folder`` | every ``*.png`` below the folder, values are class indices | given, or the run's vocabulary | no |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovlabel.errors import OvlabelError

IGNORE = 255

#: Cityscapes label id -> train id, from the ``labels`` table of cityscapesScripts
#: (``cityscapesscripts/helpers/labels.py``): ids whose train id is 255 or -1 are ignored.
CITYSCAPES_ID_TO_TRAINID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}  # every other id (0-6 unlabeled/ego vehicle/border/out of roi/static/dynamic/ground, 9 parking,
#    10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan, 30 trailer) -> 255

#: COCO category ids (1-based) never used by COCO's 80 thing classes: the 11 gaps of the 1..91 thing range.
#: COCO-Stuff's stuffthingmaps store ``id - 1`` for ids 1..182; dropping these gaps leaves its 171 classes.
COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

#: Name suffixes stripped from file stems before matching prediction and ground truth by name.
STEM_SUFFIXES = ("_gtFine_labelIds", "_gtFine_labelTrainIds", "_labelTrainIds", "_instanceTrainIds",
                 "_leftImg8bit")

LAYOUT_DEFAULTS = {  # layout: (vocabulary preset, reduce_zero_label)
    "voc2012": ("voc-bg", False),
    "pascal-context": ("pascal-context-60", False),
    "ade20k": ("ade20k", True),
    "coco-stuff": ("coco-stuff", False),
    "cityscapes": ("cityscapes", False),
    "folder": (None, False),
}


@dataclass(frozen=True)
class GroundTruth:
    """Resolved ground truth: ``root`` (the dataset folder found), ``files`` (relative key -> label PNG), the
    value ``lut`` (uint8 (256,), before ``reduce_zero_label``), the layout's default class list and label
    reduction, and a description."""

    layout: str
    root: Path
    split: str | None
    files: dict[str, Path]
    lut: np.ndarray
    default_vocab: str | None
    default_reduce_zero_label: bool
    description: str


def identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.uint8)


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut


def coco_stuff_lut() -> np.ndarray:
    """stuffthingmaps value (COCO id - 1, 0..181; 255 unlabeled) -> COCO-Stuff-171 train id."""
    lut = np.full(256, IGNORE, np.uint8)
    train_id = 0
    for value in range(182):
        if value + 1 not in COCO_UNUSED_IDS:
            lut[value] = train_id
            train_id += 1
    assert train_id == 171
    return lut


def reduce_zero_label_lut(lut: np.ndarray) -> np.ndarray:
    """Compose mmseg's reduce_zero_label after ``lut``: 0 -> 255, v -> v - 1, and 255 stays 255."""
    reduced = lut.astype(np.int16) - 1
    reduced[lut == 0] = IGNORE
    reduced[reduced == 254] = IGNORE
    return reduced.astype(np.uint8)


def stem_key(rel: str) -> str:
    """Matching key of a file path relative to its root: the path without suffix and without the known
    dataset suffixes (``_leftImg8bit``, ``_gtFine_labelIds``, ...)."""
    p = Path(rel)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    for suffix in STEM_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return (p.parent / stem).as_posix()


def detect_layout(root: Path) -> str:
    """The layout a ground-truth path looks like (``folder`` when none of the known ones)."""
    for layout, probe in (("voc2012", _voc_root), ("pascal-context", _context_root), ("cityscapes", _city_root),
                          ("ade20k", _ade_root), ("coco-stuff", _coco_dir)):
        try:
            if probe(root, "val") is not None:
                return layout
        except OvlabelError:
            continue
    return "folder"


def load_ground_truth(root: str | Path, layout: str = "auto", split: str = "val") -> GroundTruth:
    """Resolve ``root`` in ``layout`` (``auto`` detects it). Raises OvlabelError naming what is missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise OvlabelError(f"ground truth '{root}' does not exist")
    if not root.is_dir():
        raise OvlabelError(f"ground truth '{root}' is a file; give a folder of label PNGs or a dataset root")
    root = root.resolve()
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "folder":
        files = {stem_key(rel): root / rel for rel in find_pngs(root)}
        if not files:
            raise OvlabelError(f"no .png label maps found under '{root}'")
        return GroundTruth("folder", root, None, files, identity_lut(), None, False, f"PNG folder {root}")
    loaders = {"voc2012": _load_voc, "pascal-context": _load_context, "ade20k": _load_ade,
               "coco-stuff": _load_coco, "cityscapes": _load_city}
    if layout not in loaders:
        raise OvlabelError(f"unknown ground-truth layout '{layout}'; expected auto, folder, {', '.join(loaders)}")
    base, files, lut, desc = loaders[layout](root, split)
    if not files:
        raise OvlabelError(f"no ground-truth label maps found for layout {layout}, split '{split}' under '{root}'")
    vocab, rzl = LAYOUT_DEFAULTS[layout]
    return GroundTruth(layout, base, split, files, lut, vocab, rzl, desc)


def find_pngs(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        out += [(rel_dir / f).as_posix() for f in sorted(filenames)
                if f.lower().endswith(".png") and not f.startswith(".")]
    return out


def _first(root: Path, candidates: list[str], check) -> Path | None:
    for c in candidates:
        p = root / c if c else root
        if check(p):
            return p
    return None


def _voc_root(root: Path, split: str) -> Path | None:
    return _first(root, ["", "VOC2012", "VOCdevkit/VOC2012"],
                  lambda p: (p / "SegmentationClass").is_dir() and (p / "ImageSets" / "Segmentation").is_dir())


def _context_root(root: Path, split: str) -> Path | None:
    return _first(root, ["", "VOC2010", "VOCdevkit/VOC2010"],
                  lambda p: (p / "SegmentationClassContext").is_dir()
                  and (p / "ImageSets" / "SegmentationContext").is_dir())


def _ade_root(root: Path, split: str) -> Path | None:
    return _first(root, ["", "ADEChallengeData2016"], lambda p: (p / "annotations" / "validation").is_dir())


def _city_root(root: Path, split: str) -> Path | None:
    return _first(root, ["", "cityscapes"], lambda p: (p / "gtFine").is_dir())


def _coco_dir(root: Path, split: str) -> tuple[Path, bool] | None:
    """(folder, is_raw_stuffthingmaps) for COCO-Stuff 164k."""
    for base in (root, root / "coco_stuff164k"):
        converted = base / "annotations" / f"{split}2017"
        if converted.is_dir() and next(converted.glob("*_labelTrainIds.png"), None) is not None:
            return converted, False
        raw = base / "stuffthingmaps_trainval2017" / f"{split}2017"
        if raw.is_dir():
            return raw, True
    if next(root.glob("*_labelTrainIds.png"), None) is not None and next(root.glob("*.jpg"), None) is None:
        return root, False
    return None


def _split_ids(list_file: Path) -> list[str]:
    if not list_file.is_file():
        raise OvlabelError(f"split file '{list_file}' does not exist; is --split right?")
    from ovlabel.io.text import read_user_text

    return [ln.strip() for ln in read_user_text(list_file, "split file").split("\n") if ln.strip()]


def _from_list(folder: Path, ids: list[str], what: str) -> dict[str, Path]:
    files = {i: folder / f"{i}.png" for i in ids}
    missing = [i for i, f in files.items() if not f.is_file()]
    if missing:
        raise OvlabelError(f"{len(missing)} {what} label maps listed in the split are missing, e.g. "
                           f"'{files[missing[0]]}'")
    return files


def _load_voc(root: Path, split: str):
    base = _voc_root(root, split)
    if base is None:
        raise OvlabelError(f"'{root}' is not a VOC2012 folder (no SegmentationClass/ and ImageSets/Segmentation/)")
    ids = _split_ids(base / "ImageSets" / "Segmentation" / f"{split}.txt")
    files = _from_list(base / "SegmentationClass", ids, "VOC2012")
    return base, files, identity_lut(), f"PASCAL VOC 2012 {split} ({base})"


def _load_context(root: Path, split: str):
    base = _context_root(root, split)
    if base is None:
        raise OvlabelError(f"'{root}' is not a Pascal-Context folder in mmseg's conversion "
                           f"(no SegmentationClassContext/ and ImageSets/SegmentationContext/)")
    ids = _split_ids(base / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    files = _from_list(base / "SegmentationClassContext", ids, "Pascal-Context")
    return base, files, identity_lut(), f"Pascal-Context {split} ({base})"


def _load_ade(root: Path, split: str):
    base = _ade_root(root, split)
    if base is None:
        raise OvlabelError(f"'{root}' is not an ADE20K folder (no annotations/validation/)")
    folder = base / "annotations" / ("validation" if split == "val" else "training" if split == "train" else split)
    if not folder.is_dir():
        raise OvlabelError(f"ADE20K has no split '{split}' ('{folder}' does not exist)")
    files = {stem_key(f.name): f for f in sorted(folder.glob("*.png"))}
    return base, files, identity_lut(), f"ADE20K {split} ({base})"


def _load_coco(root: Path, split: str):
    found = _coco_dir(root, split)
    if found is None:
        raise OvlabelError(f"'{root}' holds no COCO-Stuff 164k label maps (annotations/{split}2017/*_labelTrainIds.png "
                           f"or stuffthingmaps_trainval2017/{split}2017/*.png)")
    folder, raw = found
    if raw:
        files = {stem_key(f.name): f for f in sorted(folder.glob("*.png"))}
        return folder, files, coco_stuff_lut(), f"COCO-Stuff 164k {split}, original stuffthingmaps mapped to 171 ({folder})"
    files = {stem_key(f.name): f for f in sorted(folder.glob("*_labelTrainIds.png"))}
    return folder, files, identity_lut(), f"COCO-Stuff 164k {split}, labelTrainIds ({folder})"


def _load_city(root: Path, split: str):
    base = _city_root(root, split)
    if base is None:
        raise OvlabelError(f"'{root}' is not a Cityscapes folder (no gtFine/)")
    folder = base / "gtFine" / split
    if not folder.is_dir():
        raise OvlabelError(f"Cityscapes has no split '{split}' ('{folder}' does not exist)")
    ids = sorted(folder.glob("*/*_gtFine_labelIds.png"))
    if ids:
        files = {stem_key(f.relative_to(folder).as_posix()): f for f in ids}
        return base, files, cityscapes_lut(), f"Cityscapes {split}, labelIds mapped to 19 train ids ({folder})"
    train = sorted(folder.glob("*/*_gtFine_labelTrainIds.png"))
    files = {stem_key(f.relative_to(folder).as_posix()): f for f in train}
    return base, files, identity_lut(), f"Cityscapes {split}, labelTrainIds ({folder})"


def split_images(gt: GroundTruth) -> dict[str, Path]:
    """The source image of every ground-truth file of ``gt`` (same keys as ``gt.files``), where the
    dataset's standard layout keeps it: VOC2012 / Pascal-Context ``JPEGImages/<id>.jpg``, ADE20K
    ``images/<validation|training>/<name>.jpg``, COCO-Stuff ``images/<split>2017/<name>.jpg`` (mmseg) or
    ``<split>2017/<name>.jpg`` next to the annotations, Cityscapes
    ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``. OvlabelError names the first missing image; a
    ``folder`` layout has no known image location."""
    if gt.layout == "folder":
        raise OvlabelError("a folder of label PNGs does not say where its images are; give a dataset root in a "
                           "known layout (voc2012, pascal-context, ade20k, coco-stuff, cityscapes)")
    split = gt.split or "val"
    if gt.layout in ("voc2012", "pascal-context"):
        where = [lambda k: gt.root / "JPEGImages" / f"{k}.jpg"]
    elif gt.layout == "ade20k":
        folder = gt.root / "images" / ("validation" if split == "val" else "training" if split == "train" else split)
        where = [lambda k: folder / f"{k}.jpg"]
    elif gt.layout == "coco-stuff":
        base = gt.root.parent.parent  # annotations/<split>2017 or stuffthingmaps_trainval2017/<split>2017
        where = [lambda k, b=b: b / f"{k}.jpg" for b in (base / "images" / f"{split}2017", base / f"{split}2017",
                                                          gt.root.parent / f"{split}2017", gt.root)]
    elif gt.layout == "cityscapes":
        where = [lambda k: gt.root / "leftImg8bit" / split / f"{k}_leftImg8bit.png"]
    else:
        raise OvlabelError(f"no known image location for layout '{gt.layout}'")
    out, missing = {}, []
    for key in gt.files:
        found = next((p for p in (f(key) for f in where) if p.is_file()), None)
        if found is None:
            missing.append(where[0](key))
        else:
            out[key] = found
    if missing:
        raise OvlabelError(f"{len(missing)} of {len(gt.files)} images of the {gt.layout} {split} split are missing, "
                           f"e.g. '{missing[0]}'")
    return out
