"""Peak memory of a run that meets a 144-megapixel image (docs/troubleshooting.md, "Huge images").

Each case runs in a fresh child process whose peak resident memory (Linux ``VmHWM``) is read at its end:

- ``small``: ``pseudo-label --models tiny`` on one 640x480 JPEG (the working resolution's cost);
- ``small + 144 MP``: the same folder plus a 12000x12000 JPEG (skipped by the default ``--max-pixels``:
  probed from its header, hashed as a stream, never decoded);
- ``decode 144 MP``: what decoding that image alone costs (``decode_image`` with no limit), i.e. the
  floor of any run that labels it at full resolution;
- ``small + 144 MP PNG``: as above with a 12000x12000 PNG (a compressed one: the bytes are small, the
  pixels are not).

    python benchmarks/huge_images.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from refine_eval import machine  # noqa: E402

HWM = 'print("VmHWM", next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))'

LABEL = """
import sys
from ovlabel.cli import app
try:
    app(["pseudo-label", sys.argv[1], "--out", sys.argv[2], "--models", "tiny", "--device", "cpu",
         "--resolution", "224", "--no-progress", "--min-crops", "1", "--points-per-side", "8"])
except SystemExit as exc:
    print("exit", exc.code)
""" + HWM

DECODE = """
import sys
from pathlib import Path
from ovlabel.io.images import decode_image
img = decode_image(Path(sys.argv[1]).read_bytes(), max_pixels=None)
print("decoded", img.shape)
""" + HWM

MAKE = """
import sys
import numpy as np
from PIL import Image
side = 12000
y = (np.arange(side, dtype=np.uint16)[:, None] * 7 % 256).astype(np.uint8)
x = (np.arange(side, dtype=np.uint16)[None, :] * 3 % 256).astype(np.uint8)
rgb = np.stack(np.broadcast_arrays(y, x, (y ^ x)), axis=2)
Image.fromarray(rgb).save(sys.argv[1], quality=85)
Image.fromarray(rgb[..., 0]).save(sys.argv[2], compress_level=1)
"""


def child(code: str, *args) -> tuple[int, float, str]:
    """Run ``code`` in a fresh interpreter: (peak RSS in KiB, seconds, its output)."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    out = res.stdout + res.stderr
    hwm = int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("VmHWM")))
    return hwm, time.perf_counter() - t, out


def main() -> None:
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, both, png = tmp / "small", tmp / "both", tmp / "png"
        for d in (small, both, png):
            d.mkdir()
            Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)).save(d / "a.jpg")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", MAKE, both / "huge.jpg", png / "huge.png"], check=True)
        made = time.perf_counter() - t
        print(f"machine: {machine()}")
        print(f"144 MP test images written in {made:.0f} s: JPEG {(both / 'huge.jpg').stat().st_size / 2**20:.1f} MiB, "
              f"PNG {(png / 'huge.png').stat().st_size / 2**20:.1f} MiB")
        rows = []
        for name, code, args in (
            ("small", LABEL, (small, tmp / "r1")),
            ("small + 144 MP JPEG", LABEL, (both, tmp / "r2")),
            ("small + 144 MP PNG", LABEL, (png, tmp / "r3")),
            ("decode 144 MP JPEG", DECODE, (both / "huge.jpg",)),
        ):
            hwm, secs, out = child(code, *args)
            summary = next((ln for ln in out.splitlines() if " images: " in ln or ln.startswith("decoded")), "")
            rows.append((name, hwm, secs, summary))
        print("| case | peak RSS (MiB) | seconds | result |\n|---|---|---|---|")
        for name, hwm, secs, summary in rows:
            print(f"| {name} | {hwm / 1024:.0f} | {secs:.1f} | {summary.split(' -> ')[0]} |")


if __name__ == "__main__":
    main()
