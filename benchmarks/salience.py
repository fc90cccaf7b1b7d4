"""Seconds per image of PnP-OVSS salience (``ovlabel salience``'s per-image work) with the full-size BLIP.

Model: ``blip:itm-large-coco/random``, the architecture of Salesforce/blip-itm-large-coco (ViT-L/16 image
encoder: width 1024, 24 layers, 16 heads, 384 px; BERT-base text encoder with cross-attention: 12 layers,
12 heads) with random weights: the cost is that of the real model, the labels are meaningless. Image:
scikit-image's astronaut (512x512). Per class count K (1, 5, 20 COCO-Stuff names in one prompt): three
Salience DropOut iterations (one BLIP forward + one gradient pass each, seed 004 §3.2), threshold, blur and
dense CRF (10 iterations, CutLER's parameters), as :class:`ovlabel.stages.salience.SalienceExtractor` runs
them. Reports the median over ``--repeat`` timed images (after one warm-up) and the share of time in the
BLIP forward, the gradient pass, the CRF, and the rest (preprocessing, upsampling, blur, mask encoding).

The paper reports 2.46 s per image on an A6000 (seed 004 §10). Timings on a shared, loaded machine vary;
the load average is printed with the table.

    python benchmarks/salience.py                         # auto device, K = 1 5 20
    python benchmarks/salience.py --device cpu --classes 1 5 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path


def machine(device) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {cores} usable cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads{load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--classes", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--resolution", type=int, default=384, help="BLIP input side (px)")
    ap.add_argument("--repeat", type=int, default=3, help="timed images per class count (after one warm-up)")
    ap.add_argument("--model", default="blip:itm-large-coco/random")
    args = ap.parse_args()

    import numpy as np
    import torch
    from skimage import data

    torch.set_flush_denormal(True)
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.models.registry import load_model, parse_model
    from ovlabel.salience_config import SalienceConfig
    from ovlabel.stages.salience import SalienceExtractor
    from ovlabel.vocab import load_vocabulary

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    tic = time.perf_counter()
    blip = load_model(parse_model(args.model, "blip"), device, precision)
    load_s = time.perf_counter() - tic
    ext = SalienceExtractor(blip, SalienceConfig(resolution=args.resolution))
    image = data.astronaut()
    names = load_vocabulary("coco-stuff").names

    rows = []
    for k in args.classes:
        classes = list(range(k))
        per_image, parts = [], []
        for i in range(args.repeat + 1):
            blip.timings.clear()
            ext.timings.clear()
            img = np.roll(image, 7 * i, axis=1)  # a different image each time
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tic = time.perf_counter()
            with torch.inference_mode():
                ext.label([img], [[names[c] for c in classes]], [classes])
            total = time.perf_counter() - tic
            if i:  # the first image warms up kernels and allocators
                per_image.append(total)
                parts.append((blip.timings["forward"], blip.timings["backward"], ext.timings["crf"], total))
        med = statistics.median(per_image)
        share = [statistics.median(p[j] / p[3] for p in parts) for j in range(3)]
        tokens = len(blip.prompt([names[c] for c in classes]).ids)
        rows.append((k, tokens, med, *share, 1 - sum(share)))

    print(f"salience, {args.model} ({blip.num_layers} text layers x {blip.num_heads} heads), "
          f"{args.resolution}px input, 3 dropout iterations, 512x512 image, {device} {precision}")
    print(f"machine: {machine(device)}")
    print(f"model load: {load_s:.1f} s (not included)")
    print(f"{'classes':>7} {'tokens':>6} {'s/image':>8} {'forward':>8} {'backward':>8} {'CRF':>6} {'other':>6}")
    for k, t, s, f, b, c, o in rows:
        print(f"{k:7d} {t:6d} {s:8.2f} {f:8.0%} {b:8.0%} {c:6.0%} {o:6.0%}")
    print("paper (seed 004 §10): 2.46 s/image on one A6000")


if __name__ == "__main__":
    main()
