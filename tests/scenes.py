"""Synthetic scenes with exact masks, written as a pseudo-label run directory (pseudo labels = ground truth).

Four classes with distinct colour and texture: a flat red square, a green disk with a darker ring, blue
horizontal stripes, on a grey noisy background. Shapes are placed at random (seeded), so held-out scenes
differ from the training ones in layout, size and colour jitter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ovlabel.artifacts import RunLayout, label_names, write_label_png, write_manifest
from ovlabel.dataset import write_masks_and_coco
from ovlabel.masks import SOURCE_STAGE_1_1, MaskSet
from ovlabel.vocab import load_templates, load_vocabulary

CLASSES = ["red square", "green disk", "blue stripes", "grey background"]
VOCAB = ",".join(CLASSES)


def scene(rng: np.random.Generator, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 ``(size, size, 3)`` scene and its exact label map uint8 ``(size, size)``."""
    img = (rng.normal(128, 12, (size, size, 3))).clip(0, 255)
    lab = np.full((size, size), 3, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for cls in rng.permutation(3)[: rng.integers(2, 4)]:
        s = int(rng.integers(size // 4, size // 2))
        y0, x0 = (int(v) for v in rng.integers(0, size - s, 2))
        jitter = rng.normal(0, 10, 3)
        if cls == 0:
            region = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
            color = np.array([210, 40, 40]) + jitter
            img[region] = color
        elif cls == 1:
            r2 = (yy - y0 - s / 2) ** 2 + (xx - x0 - s / 2) ** 2
            region = r2 < (s / 2) ** 2
            img[region] = np.array([40, 190, 60]) + jitter
            img[region & (r2 > (s / 3) ** 2)] *= 0.7
        else:
            region = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
            stripes = ((yy // 4) % 2 == 0)[region]
            img[region] = np.where(stripes[:, None], np.array([40, 60, 220]) + jitter, np.array([230, 230, 240]))
        lab[region] = cls
    return img.round().clip(0, 255).astype(np.uint8), lab


def write_images(folder: Path, n: int, seed: int, size: int = 112) -> dict[str, np.ndarray]:
    """Write ``n`` scenes as PNGs into ``folder``; returns ``{file name: label map}``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gt = {}
    for i in range(n):
        img, lab = scene(rng, size)
        name = f"scene_{i:03d}.png"
        Image.fromarray(img).save(folder / name)
        gt[name] = lab
    return gt


def masks_of(label_map: np.ndarray, source: str = SOURCE_STAGE_1_1) -> MaskSet:
    present = np.unique(label_map)
    present = present[present != 255]
    if not len(present):
        return MaskSet.empty()
    dense = label_map[None] == present[:, None, None]
    return MaskSet.from_dense(dense, present, np.full(len(present), 0.9, np.float32), source)


def write_run(run_dir: Path, images: Path, gt: dict[str, np.ndarray], clip: str = "clip:tiny", sources=None) -> Path:
    """A complete pseudo-label run over ``images`` whose masks are the ground truth (one mask per class
    per image; ``sources`` may give a per-image source name)."""
    layout = RunLayout(run_dir)
    vocab = load_vocabulary(VOCAB)
    templates = load_templates("fmbseg")
    names = label_names(sorted(gt))
    rows, sets = [], []
    for image_id, name in enumerate(sorted(gt), start=1):
        lab = gt[name]
        ms = masks_of(lab, (sources or {}).get(name, SOURCE_STAGE_1_1))
        sha = hashlib.sha256((images / name).read_bytes()).hexdigest()
        h, w = lab.shape
        rows.append({"image_id": image_id, "file": name, "sha256": sha, "width": w, "height": h, "status": "ok",
                     "reason": None, "label_file": f"labels/{names[name]}", "num_masks": len(ms)})
        write_label_png(layout.root / rows[-1]["label_file"], ms.label_map(h, w))
        sets.append((image_id, ms))
    write_masks_and_coco(layout, rows, sets, vocab.names, {"description": "synthetic scenes"})
    write_manifest(layout.manifest, rows)
    settings = {"stages": ["1.1"], "vocabulary": vocab.to_json(), "templates": templates.to_json(), "models": {"clip": clip, "sam": "sam:tiny"}}
    run = {"status": "complete", "settings_key": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16],
           "settings": settings, "input": {"path": str(images), "kind": "folder", "root": str(images)}}
    layout.run_json.write_text(json.dumps(run))
    return run_dir


def miou(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int) -> float:
    """Mean IoU over classes that occur in the ground truth or the predictions (one confusion matrix)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for p, g in zip(preds, gts):
        conf += np.bincount(g.ravel().astype(np.int64) * num_classes + p.ravel(), minlength=num_classes**2).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))
