"""Start-up: the README's tiny demo, end to end, and where its seconds go.

Runs ``ovlabel pseudo-label sample_data --models tiny --out OUT --no-progress`` (the four sample photos,
all defaults, a fresh output folder each time) ``--repeats`` times and prints the median, min and max
wall time of the whole command; then, in one fresh process, how long each heavy import takes in the
order the command meets them, and ``ovlabel --version`` (the CLI without any model).

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine, uptime

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = """
import json, time
out = {}
for name in ("torch", "open_clip", "segment_anything", "ovlabel.cli", "ovlabel.labelling.stage1"):
    t = time.perf_counter()
    __import__(name)
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def ovlabel_cmd() -> list[str]:
    exe = shutil.which("ovlabel", path=str(Path(sys.executable).parent)) or shutil.which("ovlabel")
    return [exe] if exe else [sys.executable, "-m", "ovlabel"]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}; load before: {uptime()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ovlabel-startup-"))
    demo, version = [], []
    try:
        for i in range(args.repeats):  # interleaved: the demo, then the bare CLI
            out = work / f"run-{i}"
            demo.append(timed([*ovlabel_cmd(), "pseudo-label", "sample_data", "--models", "tiny", "--out", str(out),
                               "--no-progress"]))
            version.append(timed([*ovlabel_cmd(), "--version"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    imports = json.loads(subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True,
                                        cwd=ROOT, env={**os.environ}).stdout)
    print("\n| command | median s | min s | max s | runs |")
    print("|---|---:|---:|---:|---:|")
    for name, xs in (("pseudo-label sample_data --models tiny", demo), ("ovlabel --version", version)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} | {len(xs)} |")
    print("\n| import (in order, one process) | s |")
    print("|---|---:|")
    for name, s in imports.items():
        print(f"| {name} | {s:.2f} |")
    print(f"\nload after: {uptime()}")


if __name__ == "__main__":
    main()
