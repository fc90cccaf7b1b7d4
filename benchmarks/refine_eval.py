"""Throughput of ``refine`` (dense CRF per image, several worker counts) and ``eval`` (images per second).

Refine: a run of N copies of a 512x512 photo (scikit-image's astronaut, shifted per copy so no two images
are identical) whose label maps hold 21 classes in irregular regions (a Voronoi partition), refined with
the default settings (CutLER's CRF, 10 iterations, blur 1 % of the short side). Reports seconds per image
and images per second for each worker count, plus where one image's time goes (blur vs CRF inference).

Eval: M pairs of 512x512 label PNGs (21 classes, 5 % ignore) scored with ``eval``; reports images per
second for each reader-thread count.

    python benchmarks/refine_eval.py                      # N=16 refine images, M=500 eval pairs
    python benchmarks/refine_eval.py --images 8 --pairs 200 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"{cpu}, {cores} usable cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def voronoi_labels(h: int, w: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.random((3 * k, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return (d.argmin(axis=-1) % k).astype(np.uint8)


def make_run(root: Path, n: int, size: int, k: int) -> Path:
    """A complete run written with the artifact writers: n images, label maps with k classes."""
    from PIL import Image
    from skimage import data

    from ovlabel.artifacts import RunLayout, write_label_png, write_manifest
    from ovlabel.dataset import write_masks_and_coco
    from ovlabel.io.atomic import write_json
    from ovlabel.io.images import read_file
    from ovlabel.masks import MaskSet
    from ovlabel.vocab import load_vocabulary

    vocab = load_vocabulary("voc-bg")
    base = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BILINEAR))
    layout = RunLayout(root / "run")
    rows, per_image = [], []
    for i in range(n):
        img = np.roll(base, 7 * i, axis=1)
        path = root / "images" / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        lm = voronoi_labels(size, size, k, seed=i)
        classes = [int(c) for c in np.unique(lm)]
        ms = MaskSet.from_dense(np.stack([lm == c for c in classes]), classes, [0.9] * len(classes), "stage1.1")
        write_label_png(layout.labels / f"img{i:04d}.png", lm)
        rows.append({"image_id": i + 1, "file": path.name, "sha256": read_file(path)[1], "width": size,
                     "height": size, "status": "ok", "reason": None, "label_file": f"labels/img{i:04d}.png",
                     "num_masks": len(ms)})
        per_image.append((i + 1, ms))
    write_masks_and_coco(layout, rows, per_image, vocab.names, {"description": "benchmark"})
    write_manifest(layout.manifest, rows)
    write_json(layout.run_json, {"status": "complete", "command": "pseudo-label", "settings_key": "bench",
                                 "input": {"root": str(root / "images")},
                                 "settings": {"stages": ["1.1"], "vocabulary": vocab.to_json()}})
    return layout.root


def bench_refine(tmp: Path, n: int, size: int, k: int, worker_counts: list[int]) -> list[tuple]:
    from ovlabel.artifacts import read_label_png
    from ovlabel.config import CRFConfig, RefineConfig
    from ovlabel.crf import dense_crf, unaries_from_labels
    from ovlabel.io.images import decode_image, read_file
    from ovlabel.labelling.refine import refine

    run_dir = make_run(tmp, n, size, k)
    cfg = CRFConfig()
    image = decode_image(read_file(tmp / "images" / "img0000.png")[0])
    lm = read_label_png(run_dir / "labels" / "img0000.png")
    t0 = time.perf_counter()
    probs, labels = unaries_from_labels(lm, cfg)
    t1 = time.perf_counter()
    dense_crf(image, probs, cfg)
    t2 = time.perf_counter()
    rows = [("one image: Gaussian-smoothed unaries", f"{len(labels)} labels", f"{t1 - t0:.3f} s", ""),
            ("one image: CRF inference (10 iterations)", "", f"{t2 - t1:.3f} s", "")]
    for w in worker_counts:
        out = tmp / f"refined-{w}"
        t = time.perf_counter()
        s = refine(run_dir, out, RefineConfig(crf=cfg, workers=w, progress=False))
        wall = time.perf_counter() - t
        assert s.new == n and not s.failures, s.describe()
        rows.append((f"refine, {w} worker process(es)", f"{n} images", f"{wall / n:.3f} s/img", f"{n / wall:.2f} img/s"))
        shutil.rmtree(out)
    return rows


def bench_eval(tmp: Path, m: int, size: int, k: int, thread_counts: list[int]) -> list[tuple]:
    from PIL import Image

    from ovlabel.config import EvalConfig
    from ovlabel.evaluate.run import evaluate

    rng = np.random.default_rng(0)
    for i in range(m):
        gt = voronoi_labels(size // 8, size // 8, k, seed=i).repeat(8, 0).repeat(8, 1)
        gt[rng.random(gt.shape) < 0.05] = 255
        pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, k, gt.shape)).astype(np.uint8)
        for folder, arr in (("gt", gt), ("pred", pred)):
            (tmp / folder).mkdir(exist_ok=True)
            Image.fromarray(arr).save(tmp / folder / f"{i:05d}.png")
    rows = []
    for w in thread_counts:
        t = time.perf_counter()
        res = evaluate(tmp / "pred", tmp / "gt", EvalConfig(gt_classes="voc-bg", workers=w, progress=False,
                                                            report=str(tmp / "reports" / f"r{w}.json")))
        wall = time.perf_counter() - t
        rows.append((f"eval, {w} reader thread(s)", f"{m} pairs, mIoU {100 * res.scores.miou:.1f}",
                     f"{1000 * wall / m:.2f} ms/img", f"{m / wall:.0f} img/s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="refine: images in the run")
    ap.add_argument("--pairs", type=int, default=500, help="eval: label-map pairs")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts to try (default 1, 2, 4, 8 up to the cores)")
    args = ap.parse_args()
    from ovlabel.config import default_workers

    counts = args.workers or [w for w in (1, 2, 4, 8, 16) if w <= default_workers(cap=64)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "r").mkdir()
        (tmp / "e").mkdir()
        rows = bench_refine(tmp / "r", args.images, args.size, args.classes, counts)
        rows += bench_eval(tmp / "e", args.pairs, args.size, args.classes, counts)
    print(f"machine: {machine()}")
    print(f"inputs: {args.size}x{args.size} images, {args.classes} classes\n")
    print(f"| {'measure':42} | {'work':24} | {'time':14} | {'rate':12} |")
    print(f"|{'-' * 44}|{'-' * 26}|{'-' * 16}|{'-' * 14}|")
    for r in rows:
        print(f"| {r[0]:42} | {r[1]:24} | {r[2]:14} | {r[3]:12} |")


if __name__ == "__main__":
    main()
