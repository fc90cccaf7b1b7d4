"""Stage 1.1 throughput with full-size architectures (random weights: timing only, labels meaningless).

Runs ``pseudo-label --stages 1.1`` (default settings) on sample_data/ and prints a table: seconds per image
(model loading excluded and reported apart), where the time goes (each model call is timed from outside),
CLIP forward batches, crops, SAM image-encoder passes and mask-decoder calls per image, and what it ran on.

    python benchmarks/stage11.py                       # ViT-L-14 + SAM ViT-H, CPU or first GPU
    python benchmarks/stage11.py --clip clip:ViT-B-16/random --sam sam:vit_b/random --device cpu
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO / "sample_data"))
    ap.add_argument("--clip", default="clip:ViT-L-14/random")
    ap.add_argument("--sam", default="sam:vit_h/random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs (after loading); the median is reported")
    args = ap.parse_args()
    # A fresh text-embedding cache: the class texts are encoded once per run and that cost is reported.
    cache = tempfile.TemporaryDirectory()
    os.environ["OVLABEL_CACHE"] = cache.name

    import torch

    from ovlabel.config import DetectConfig, PseudoLabelConfig
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.labelling.stage1 import label as run
    from ovlabel.models.registry import load_model, parse_model

    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    t0 = time.perf_counter()
    clip = load_model(parse_model(args.clip, "clip"), device, precision)
    sam = load_model(parse_model(args.sam, "sam"), device, precision)
    load_s = time.perf_counter() - t0

    timers = {}
    for obj, name in [(clip, "encode_crops"), (clip, "encode_text"), (sam, "embed"), (sam, "decode"), (sam, "upscale")]:
        _time_method(obj, name, timers, device)

    cfg = PseudoLabelConfig(
        vocab="coco-stuff", device=args.device, precision=args.precision, stages=("1.1",), detect=DetectConfig(),
        progress=False,
    )
    walls, summary = [], None
    for _ in range(args.repeat):
        clip.stats.clear()
        sam.stats.clear()
        timers.clear()
        with tempfile.TemporaryDirectory() as out:
            shutil.rmtree(cache.name, ignore_errors=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            summary = run(args.images, Path(out) / "run", cfg, models={"clip": clip, "sam": sam})
            if device.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t)
    n = summary.labelled
    stats = summary.stats
    wall = sorted(walls)[len(walls) // 2]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"Stage 1.1 benchmark: {args.clip} + {args.sam}, default settings, vocabulary coco-stuff (171)")
    print(f"ran on: {where}; precision {precision}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"images: {n} from {args.images}; model loading {load_s:.1f} s (not counted); timed runs: {len(walls)}")
    print()
    t = {k: v / n for k, v in timers.items()}  # seconds per image, last run
    model_s = sum(t.values())
    rows = [
        ("seconds per image (median run)", f"{wall / n:.2f}"),
        ("seconds per image without the one-off text encoding", f"{wall / n - t.get('encode_text', 0):.2f}"),
        ("  CLIP crop forwards", f"{t.get('encode_crops', 0):.2f}"),
        ("  CLIP text (171 prompts once per run, shared by all images)", f"{t.get('encode_text', 0):.2f}"),
        ("  SAM image encoder", f"{t.get('embed', 0):.2f}"),
        ("  SAM mask decoder", f"{t.get('decode', 0):.2f}"),
        ("  SAM mask upsampling", f"{t.get('upscale', 0):.2f}"),
        ("  everything else (I/O, geometry, RLE, writing)", f"{wall / n - model_s:.2f}"),
        ("CLIP forward batches per image", f"{stats.get('clip_image_batches', 0) / n:.2f}"),
        ("CLIP crops per image", f"{stats.get('clip_crops', 0) / n:.2f}"),
        ("SAM image-encoder passes per image", f"{stats.get('sam_image_encoder_passes', 0) / n:.2f}"),
        ("SAM mask-decoder calls per image", f"{stats.get('sam_decoder_calls', 0) / n:.2f}"),
        ("SAM prompts (present classes) per image", f"{stats.get('sam_prompts', 0) / n:.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':{w}} | {'value':>8} |")
    print(f"|{'-' * (w + 2)}|{'-' * 10}|")
    for k, v in rows:
        print(f"| {k:{w}} | {v:>8} |")


def _time_method(obj, name, timers, device):
    """Wrap ``obj.name`` so its wall time (synchronised on CUDA) accumulates in ``timers[name]``."""
    import torch

    inner = getattr(obj, name)

    def timed(*a, **kw):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0
        return out

    setattr(obj, name, timed)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ovlabel.malloc import reexec_with_malloc_tuning

    reexec_with_malloc_tuning([sys.executable, *sys.argv])  # the CLI runs with it; so do the timings
    sys.exit(main())
