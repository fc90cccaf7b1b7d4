"""Which reading of FMbSeg's Eq. 1 trains better: ``batch`` or ``literal`` loss normalisation (ovlabel.loss).

The learnability setting of tests/test_stage2.py: synthetic scenes (tests/scenes.py, four classes, pseudo
labels = ground truth), the tiny DINOv2 (random weights) and tiny CLIP text encoder, ``train-align``'s
default recipe (10 epochs, batch 5, lr 0.05, resolution 112 = 8 x 8 patches), 30 training scenes and 10
held-out scenes per scene seed. Two scenarios:

- ``full``: every pixel labelled (B·N = M: only the 1/K vs per-batch class mean differs);
- ``no-background``: the grey background is left unlabeled in the training labels (about half the
  patches ignored, so 1/(B·N) and the mean over labelled patches differ too); scored on the three object
  classes, background pixels ignored.

For each scenario and scene seed both normalisations train from the same initialisation on the same
cached features, one after the other (interleaved), and segment the held-out scenes; the table reports
held-out mIoU per seed and the mean.

    python benchmarks/loss_norm.py              # 3 scene seeds, both scenarios
    python benchmarks/loss_norm.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import uptime

REPO = Path(__file__).resolve().parents[1]
NORMS = ("batch", "literal")


def miou(preds, gts, num_classes: int) -> float:
    """Mean IoU over classes present in ground truth or prediction; ground-truth 255 is ignored."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for p, g in zip(preds, gts):
        keep = g != 255
        conf += np.bincount(g[keep].astype(np.int64) * num_classes + p[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def one_seed(tmp: Path, seed: int, scenario: str, models: dict) -> dict[str, float]:
    from ovlabel.artifacts import RunLayout, read_label_png, read_manifest
    from ovlabel.config import SegmentConfig, TrainAlignConfig
    from ovlabel.labelling.segment import segment
    from ovlabel.training import align as train_mod
    from scenes import CLASSES, VOCAB, write_images, write_run

    root = tmp / f"{scenario}-{seed}"
    gt = write_images(root / "train", 30, seed=seed)
    test_gt = write_images(root / "test", 10, seed=100 + seed)
    classes = VOCAB
    if scenario == "no-background":
        gt = {k: np.where(v == 3, 255, v).astype(np.uint8) for k, v in gt.items()}
        test_gt = {k: np.where(v == 3, 255, v).astype(np.uint8) for k, v in test_gt.items()}
        classes = ",".join(CLASSES[:3])
    run = write_run(root / "run", root / "train", gt)
    out = {}
    for norm in NORMS:
        cfg = TrainAlignConfig(models="tiny", resolution=112, device="cpu", feature_cache=str(root / "features"),
                               progress=False, loss_norm=norm)
        train_mod.train(run, root / f"ckpt-{norm}", cfg, models)
        dest = root / f"seg-{norm}"
        segment(root / "test", dest, SegmentConfig(classes=classes, checkpoint=str(root / f"ckpt-{norm}"),
                                                     device="cpu", progress=False), models)
        rows = read_manifest(RunLayout(dest).manifest)
        preds = [read_label_png(dest / r["label_file"]) for r in rows]
        out[norm] = miou(preds, [test_gt[r["file"]] for r in rows], len(classes.split(",")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scenarios", nargs="+", default=["full", "no-background"])
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    os.environ["OVLABEL_CACHE"] = tmp.name
    sys.path.insert(0, str(REPO / "tests"))

    import torch

    from ovlabel.models.registry import load_model, parse_model

    torch.set_flush_denormal(True)
    cpu = torch.device("cpu")
    models = {"dinov2": load_model(parse_model("dinov2:tiny", "dinov2"), cpu, "fp32"),
              "clip": load_model(parse_model("clip:tiny", "clip"), cpu, "fp32")}
    load = uptime()
    t0 = time.perf_counter()
    results = {s: {seed: one_seed(Path(tmp.name), seed, s, models) for seed in args.seeds} for s in args.scenarios}
    print(f"loss normalisation on the synthetic learnability scenes; CPU ({platform.processor() or platform.machine()},"
          f" {torch.get_num_threads()} threads), torch {torch.__version__}; {time.perf_counter() - t0:.0f} s")
    print(f"load at start: {load}")
    print()
    print("| scenario | normalisation | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|---|" + "---|" * (len(args.seeds) + 1))
    for scenario, per_seed in results.items():
        for norm in NORMS:
            vals = [per_seed[s][norm] for s in args.seeds]
            print(f"| {scenario} | {norm} | " + " | ".join(f"{v:.3f}" for v in vals)
                  + f" | {statistics.mean(vals):.3f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
