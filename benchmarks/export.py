"""Speed and memory of ``ovlabel export``, per format.

A run of N 512x512 images with 21 classes in irregular regions (benchmarks/refine_eval.py's ``make_run``:
one mask per class per image) is exported to each format in a fresh child process (``--images copy``),
for N and 4N images: seconds per image (the imports of ovlabel.export and of the format's libraries are
timed apart) and the
child's peak resident memory (Linux ``VmHWM``), which should not grow with N (the export streams). Needs
scikit-image (refine_eval.py's run uses its astronaut photo).

    python benchmarks/export.py                     # N=25 and 100
    python benchmarks/export.py --images 10 --formats mmseg hf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from refine_eval import machine, make_run  # noqa: E402

CHILD = """
import json, sys, time
from ovlabel.config.export import ExportConfig
t0 = time.perf_counter()
import ovlabel.export
from ovlabel.export import _WRITERS
import importlib
importlib.import_module(_WRITERS[sys.argv[3]][0])
for dep in {"yolo-seg": ["supervision", "cv2"], "voc": ["supervision", "cv2"], "hf": ["datasets"]}.get(sys.argv[3], []):
    importlib.import_module(dep)
if sys.argv[3] == "labelstudio":
    from ovlabel.export.labelstudio import brush_module
    brush_module()
t1 = time.perf_counter()
from ovlabel.export import export_run
export_run(sys.argv[1], sys.argv[2], [sys.argv[3]], ExportConfig(split=0.9))
t2 = time.perf_counter()
# VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, copied at fork)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"import_s": t1 - t0, "export_s": t2 - t1, "peak_mib": hwm / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=25, help="N (the second size is 4N)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--formats", nargs="+", default=["yolo-seg", "voc", "mmseg", "hf", "fiftyone", "labelstudio"])
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"inputs: {args.size}x{args.size} images, 21 classes, one mask per class per image\n")
    print(f"| {'format':12} | {'images':6} | {'import s':8} | {'s / image':9} | {'peak MiB':8} |")
    print(f"|{'-' * 14}|{'-' * 8}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: make_run(Path(tmp) / f"n{n}", n, args.size, 21) for n in (args.images, 4 * args.images)}
        for fmt in args.formats:
            for n, run in runs.items():
                out = Path(tmp) / f"out{n}"
                res = subprocess.run([sys.executable, "-c", CHILD, str(run), str(out), fmt],
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"| {fmt:12} | {n:6d} | {r['import_s']:8.2f} | {r['export_s'] / n:9.3f} | {r['peak_mib']:8.0f} |")


if __name__ == "__main__":
    main()
