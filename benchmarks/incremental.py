"""Incremental reruns and memory at scale: the engine's own cost, without models.

A stage whose worker needs no model (each image's masks: its pixels by dominant colour channel) labels N
synthetic images through the real engine (scan, parts, label maps, the artifact rebuild, run.json). Then
one image is added and the run repeated: the cost of an incremental rerun. Each step runs in a fresh
process with the allocator settings the ``ovlabel`` command restarts with (:mod:`ovlabel.malloc`; peak
RSS = that process's), N images side by side with another N, interleaved.

``--tiny`` runs the real command instead, ``ovlabel pseudo-label IMAGES --models tiny`` (tiny random CLIP
and SAM, Stages 1.1 and 1.2, ``--vocab voc``, ``--points-per-side 8`` to keep 10,000 images within an hour
on 2 cores; every other setting the default), and reports the same columns.

    python benchmarks/incremental.py --sizes 100 3000 --repeats 3
    python benchmarks/incremental.py --sizes 100 10000 --repeats 1
    python benchmarks/incremental.py --sizes 100 10000 --repeats 1 --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine, uptime

from ovlabel.malloc import MALLOC_ENV


def make_images(folder: Path, n: int, start: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, :32, rng.integers(3)] = 200  # two flat halves: two masks per image
        img[:, 32:, rng.integers(3)] = 150
        img[0, :8, 0] = np.frombuffer(int(i).to_bytes(8, "little"), np.uint8)  # every image's content differs
        Image.fromarray(img).save(folder / f"img_{i:06d}.png")


def run_once(images: str, out: str) -> dict:
    """One run of the colour stage over ``images`` into ``out``; returns seconds and peak RSS (MiB)."""
    from ovlabel.engine import Output, Stage, Worker, execute, from_images
    from ovlabel.masks import MaskSet

    class ColourWorker(Worker):
        device = "cpu"

        def process(self, imgs, works):
            out = []
            for img in imgs:
                best = img.argmax(axis=2)
                masks = np.stack([best == c for c in range(3)])
                keep = [c for c in range(3) if masks[c].any()]
                ms = MaskSet.from_dense(masks[keep], keep, [1.0] * len(keep), "colour")
                out.append(Output({"colour": ms}, img.shape[:2]))
            return out

    class ColourStage(Stage):
        def worker(self, device):
            return ColourWorker()

    stage = ColourStage(command="colour", class_names=["red", "green", "blue"], settings={"stage": "colour"},
                        keys={"colour": "colourkey000000"}, description="benchmark", parameters={}, batch_size=8,
                        progress=False)
    stage.inputs = from_images(images, exclude=Path(out))
    t = time.perf_counter()
    summary = execute(stage, out)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "new": summary.new, "reused": summary.reused, "masks": summary.masks}


def child(images: Path, out: Path) -> dict:
    """:func:`run_once` in a fresh process; adds ``process_s``: the whole process (start-up and imports too)."""
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import incremental as b; " \
           f"print(json.dumps(b.run_once({str(images)!r}, {str(out)!r})))"
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **MALLOC_ENV})
    return json.loads(res.stdout.strip().splitlines()[-1]) | {"process_s": time.perf_counter() - t}


TINY = ["--models", "tiny", "--vocab", "voc", "--points-per-side", "8", "--no-progress"]


def child_tiny(images: Path, out: Path) -> dict:
    """``ovlabel pseudo-label`` with tiny models in a fresh process: its wall time (``seconds`` and
    ``process_s``), its peak RSS (the restarted process's, from ``wait4``) and its counts from run.json."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ovlabel", "pseudo-label", str(images), "--out", str(out), *TINY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ovlabel failed: {proc.stderr.read().decode()[-2000:]}")
    counts = json.loads((out / "run.json").read_text())["counts"]
    return {"seconds": seconds, "process_s": seconds, "rss_mib": usage.ru_maxrss / 1024,
            "new": counts["new_this_run"], "reused": counts["reused_this_run"], "masks": counts["masks"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 3000])
    ap.add_argument("--repeats", type=int, default=3, help="incremental reruns per size (interleaved)")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--tiny", action="store_true", help="time the ovlabel command with tiny models instead")
    args = ap.parse_args()
    run = child_tiny if args.tiny else child
    work = args.keep or Path(tempfile.mkdtemp(prefix="ovlabel-incr-"))
    load = uptime()
    what = f"ovlabel pseudo-label {' '.join(TINY)}" if args.tiny else "the engine with a model-free stage"
    print(f"machine: {machine()}; load before: {load}; timing {what}", flush=True)
    first, incr = {}, {n: [] for n in args.sizes}
    for n in args.sizes:
        make_images(work / f"images-{n}", n)
        first[n] = run(work / f"images-{n}", work / f"run-{n}")
        print(f"N={n}: first run {first[n]['seconds']:.1f} s, peak RSS {first[n]['rss_mib']:.0f} MiB", flush=True)
    for r in range(args.repeats):  # interleaved: N1, N2, N1, N2, ...
        for n in args.sizes:
            make_images(work / f"images-{n}", 1, start=10_000_000 + r)  # one new image
            res = run(work / f"images-{n}", work / f"run-{n}")
            assert res["new"] == 1, res
            incr[n].append(res)
    print("\n| images | first run s | first run peak RSS MiB | +1 image: engine s | +1 image: process s | "
          "+1 image peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    med = lambda n, k: statistics.median(x[k] for x in incr[n])
    for n in args.sizes:
        print(f"| {n} | {first[n]['seconds']:.1f} | {first[n]['rss_mib']:.0f} | {med(n, 'seconds'):.2f} | "
              f"{med(n, 'process_s'):.2f} | {med(n, 'rss_mib'):.0f} |")
    a, b = args.sizes[0], args.sizes[-1]
    print(f"\n+1 image at {b} / at {a}: engine {med(b, 'seconds') / med(a, 'seconds'):.2f}x, whole process "
          f"{med(b, 'process_s') / med(a, 'process_s'):.2f}x; first-run peak RSS {b} / {a}: "
          f"{first[b]['rss_mib'] / first[a]['rss_mib']:.2f}x; load after: "
          f"{uptime()}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
