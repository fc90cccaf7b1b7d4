"""Stage 2 heads side by side on the synthetic learnability scenes: held-out mIoU of FMbSeg's alignment
module and Fusioner's fusion module, with each pairing of encoders ovlabel offers.

The scenes are tests/scenes.py's (red squares, green disks, blue stripes on a grey noisy background;
pseudo labels = ground truth). Each configuration trains on the same ``--train`` scenes with the same
seed and is scored on the same ``--test`` held-out scenes through ``segment``'s own code path (one
confusion matrix over all held-out pixels). Models are the tiny random ones (``--models tiny``): the
figures show that each head *learns* from pseudo labels on frozen features, not how good it is with
real weights. Chance is the mIoU of uniformly random labels.

    python benchmarks/stage2_heads.py                  # 30 training scenes, 10 held-out, 10 epochs
    python benchmarks/stage2_heads.py --seeds 0 1 2    # three scene/initialisation seeds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine, uptime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

#: (name, TrainAlignConfig fields). Fusioner's fusion module at a tiny width (the encoders are tiny too).
CONFIGS = [
    ("fmbseg   dinov2 + clip text", {}),
    ("fusioner dinov2 + clip text", {"head": "fusioner"}),
    ("fusioner dinov2 + bert text", {"head": "fusioner", "text_encoder": "bert:tiny"}),
    ("fusioner clip   + clip text", {"head": "fusioner", "vision_encoder": "clip"}),
    ("fmbseg   clip   + clip text", {"vision_encoder": "clip"}),
    ("fmbseg   dinov2 + bert text", {"text_encoder": "bert:tiny"}),
]
TINY_FUSION = {"fusion_width": 64, "fusion_layers": 2, "fusion_heads": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["OVLABEL_CACHE"] = str(tmp / "cache")

    import torch

    torch.set_flush_denormal(True)
    from ovlabel.artifacts import RunLayout, read_label_png, read_manifest
    from ovlabel.config import SegmentConfig, TrainAlignConfig
    from ovlabel.labelling.segment import segment
    from ovlabel.training import align as train_mod
    from scenes import VOCAB, miou, write_images, write_run

    load = uptime()
    print(f"machine: {machine()}; load before: {load}")
    print(f"scenes: {args.train} training, {args.test} held-out per seed; {args.epochs} epochs; tiny random models\n")
    results: dict[str, list[float]] = {name: [] for name, _ in CONFIGS}
    chances, seconds = [], {name: [] for name, _ in CONFIGS}
    for s in args.seeds:
        d = tmp / f"seed{s}"
        gt = write_images(d / "train", args.train, seed=s)
        test_gt = write_images(d / "test", args.test, seed=100 + s)
        run = write_run(d / "run", d / "train", gt)
        rng = np.random.default_rng(s)
        gts = [test_gt[f] for f in sorted(test_gt)]
        chances.append(miou([rng.integers(0, 4, g.shape) for g in gts], gts, 4))
        for k, (name, fields) in enumerate(CONFIGS):  # configurations interleaved within each seed
            extra = TINY_FUSION if fields.get("head") == "fusioner" else {}
            cfg = TrainAlignConfig(models="tiny", resolution=112, device="cpu", feature_cache=str(d / "features"),
                                   progress=False, epochs=args.epochs, seed=s, **fields, **extra)
            t0 = time.perf_counter()
            train_mod.train(run, d / f"ck{k}", cfg)
            seconds[name].append(time.perf_counter() - t0)
            out = d / f"seg{k}"
            segment(d / "test", out, SegmentConfig(classes=VOCAB, checkpoint=str(d / f"ck{k}"), device="cpu", progress=False))
            rows = read_manifest(RunLayout(out).manifest)
            preds = [read_label_png(out / r["label_file"]) for r in rows]
            results[name].append(miou(preds, [test_gt[r["file"]] for r in rows], 4))
    chance = float(np.mean(chances))
    print(f"| head and encoders | held-out mIoU{' (per seed)' if len(args.seeds) > 1 else ''} | x chance | train s |")
    print("|---|---|---|---|")
    for name, _ in CONFIGS:
        vals = results[name]
        per = " / ".join(f"{v:.3f}" for v in vals)
        print(f"| {name} | {per} | {np.mean(vals) / chance:.1f} | {np.mean(seconds[name]):.1f} |")
    print(f"| uniform random labels (chance) | {' / '.join(f'{c:.3f}' for c in chances)} | 1.0 | |")
    print(f"\nload after: {uptime()}")


if __name__ == "__main__":
    main()
