"""Mask prompt tuning (OVSeg §3.3): held-out accuracy of the masked-crop classifier with and without the
learned prompts, side by side, on two synthetic tasks (tiny random CLIPs: learning, not quality).

1. scenes: ``train-mpt``'s own path (:func:`ovlabel.training.mpt.train`) on a run of tests/scenes.py
   scenes (pseudo labels = ground truth), then every ground-truth mask of held-out scenes is cropped as
   the ``ovseg`` classifier crops it and classified among the 4 classes, with plain CLIP and with the
   prompts. Squares and stripes fill their boxes (no blank patch: the prompts cannot change them); disks
   and the background leave blank patches.
2. blobs: the constructed task of tests/test_mpt.py (a disk of one of four colours on CLIP's blank colour,
   fixed random class features, a 64 px CLIP), where every crop is mostly blank.

    python benchmarks/mpt.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from _machine import machine, uptime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def scene_crops(clip, folder: Path, gt: dict):
    """Masked crops, patch masks and labels of every ground-truth region of the scenes in ``folder``."""
    import torch
    from PIL import Image

    from ovlabel.models.clip_mpt import patch_keep
    from ovlabel.stages.classify import mask_crops, masked_crops
    from scenes import masks_of

    crops, keeps, labels = [], [], []
    for name, lab in sorted(gt.items()):
        ms = masks_of(lab)
        dense = torch.from_numpy(ms.decode())
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        crops.append(masked_crops(image, dense, ms.boxes, clip.input_size, clip.fill_color))
        keeps.append(patch_keep(mask_crops(dense, ms.boxes, clip.input_size), clip.patch_size))
        labels.append(ms.class_index.astype(np.int64))
    return np.concatenate(crops), torch.cat(keeps), np.concatenate(labels)


def accuracy(clip, prompts, crops, keep, labels, text) -> float:
    from ovlabel.stages.mpt import crop_logits

    return float((crop_logits(clip, prompts, crops, keep, text).argmax(1).numpy() == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="crops per step (OVSeg: 256, for 440K crops)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["OVLABEL_CACHE"] = str(tmp / "cache")

    import torch
    import torch.nn.functional as F

    torch.set_flush_denormal(True)
    from test_mpt import blob_crops, small_clip

    from ovlabel.config.mpt import MptConfig
    from ovlabel.models.clip_mpt import load_prompts
    from ovlabel.models.registry import load_model, parse_model
    from ovlabel.text import class_text_features
    from ovlabel.training import mpt
    from ovlabel.vocab import load_templates, load_vocabulary
    from scenes import VOCAB, write_images, write_run

    load = uptime()
    print(f"machine: {machine()}; load before: {load}")
    print(f"OVSeg's optimiser (AdamW lr 2e-2, wd 0, cosine, depth 3); {args.epochs} epochs, batch {args.batch_size}\n")
    cfg = MptConfig(epochs=args.epochs, batch_size=args.batch_size, fraction=1.0, device="cpu", progress=False)
    rows = []

    clip = load_model(parse_model("clip:tiny", "clip"), torch.device("cpu"), "fp32")
    gt = write_images(tmp / "train", args.train, seed=0)
    test_gt = write_images(tmp / "test", args.test, seed=100)
    run = write_run(tmp / "run", tmp / "train", gt)
    summary = mpt.train(run, tmp / "mpt", cfg, clip=clip)
    prompts = load_prompts(tmp / "mpt", clip).prompts
    text = class_text_features(clip, load_vocabulary(VOCAB), load_templates("vild"))
    crops, keep, labels = scene_crops(clip, tmp / "test", test_gt)
    blank = (~keep).flatten(1).any(1).numpy()
    rows.append(("scenes, all held-out regions", len(labels), accuracy(clip, None, crops, keep, labels, text),
                 accuracy(clip, prompts, crops, keep, labels, text), summary.crops))
    rows.append(("scenes, regions with blank patches", int(blank.sum()),
                 accuracy(clip, None, crops[blank], keep[blank], labels[blank], text),
                 accuracy(clip, prompts, crops[blank], keep[blank], labels[blank], text), summary.crops))

    small = small_clip()
    train_b, test_b = blob_crops(small, 128, seed=0), blob_crops(small, 200, seed=1)
    text_b = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    prompts_b, _ = mpt.fit(small, *train_b, text_b, MptConfig(epochs=args.epochs, batch_size=32, progress=False))
    rows.append(("blobs (64 px CLIP)", len(test_b[2]), accuracy(small, None, *test_b, text_b),
                 accuracy(small, prompts_b, *test_b, text_b), len(train_b[2])))

    print("| task | held-out crops | plain CLIP | with mask prompts | training crops |")
    print("|---|---|---|---|---|")
    for name, n, a, b, t in rows:
        print(f"| {name} | {n} | {a:.3f} | {b:.3f} | {t} |")
    print("| chance (4 classes) | | 0.250 | 0.250 | |")
    print(f"\nload after: {uptime()}")


if __name__ == "__main__":
    main()
