"""Every stage on one CUDA GPU, full-size random weights, bf16: seconds per image, FLOP efficiency, peak memory.

    python benchmarks/gpu.py                    # CUDA machine: the table for docs/benchmarks.md, < 5 min
    python benchmarks/gpu.py --dry              # no GPU: tiny models on the CPU, 1 image (checks the script)

Stages, in order, on the ``sample_data/`` photos: pseudo-label 1.1 + 1.2 with SAM ViT-H (and with SAM 2.1
Hiera-L when the ``sam2`` extra is installed), classify-masks with the ovseg and ensemble classifiers,
salience (BLIP ITM large, VOC classes), refine (dense CRF: CPU by design), train-align (1 epoch, DINOv2
ViT-L/14) and segment. Models are built once (their random initialisation is not timed) and injected.

Per stage: a warm-up pass on one image into a scratch run (kernels, allocator, the on-disk text-feature
cache), a second one under ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs per image), then the timed
pass on all images into a fresh run. FLOP efficiency = counted FLOPs per image / seconds per image / peak, against the device's
published dense bf16 peak (where the name is known) and against a measured 8192^3 bf16 matmul.

It fails loudly: a stage that raises, records a failed image, writes no output, or leaves the GPU unused
(peak memory under 1 MiB) is reported as FAILED and the script exits 1 after printing the table; so does a
total wall time over ``--budget`` seconds. Without CUDA it refuses to run unless ``--dry`` is given.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]

#: Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by name substring.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO / "sample_data"))
    ap.add_argument("--images-max", type=int, default=4)
    ap.add_argument("--dry", action="store_true", help="CPU, tiny models, 1 image: check the script without a GPU")
    ap.add_argument("--budget", type=float, default=None,
                    help="fail if the whole script takes longer (s; default 300 on a GPU, none with --dry)")
    ap.add_argument("--points-per-side", type=int, default=32)
    args = ap.parse_args()
    if args.budget is None:
        args.budget = float("inf") if args.dry else 300.0
    start = time.perf_counter()
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("FAILED: no CUDA device here (torch.cuda.is_available() is False); run with --dry to check the "
              "script on the CPU", file=sys.stderr)
        return 2
    torch.set_flush_denormal(True)
    cache = tempfile.TemporaryDirectory()
    import os

    os.environ["OVLABEL_CACHE"] = cache.name
    device = torch.device("cpu" if args.dry else "cuda:0")
    precision = "fp32" if args.dry else "bf16"
    names = _model_names(args.dry)
    work = Path(tempfile.mkdtemp(prefix="ovlabel-gpu-"))
    images, one = _image_folders(Path(args.images), work, 1 if args.dry else args.images_max)
    peak_spec, peak_meas = _peaks(device, args.dry)
    t0 = time.perf_counter()
    models = {k: _load(v, device, precision) for k, v in names.items()}
    load_s = time.perf_counter() - t0
    rows, failures = [], []
    for name, fn in _stages(models, device, precision, args):
        try:
            rows.append(_measure(name, fn, images, one, work, device, peak_spec, peak_meas))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the script exits 1
            traceback.print_exc()
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            rows.append((name, "FAILED", "", "", "", ""))
    total = time.perf_counter() - start
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, dry run)"
    print(f"ovlabel on {where}; precision {precision}; torch {torch.__version__}; {len(_listing(images))} images "
          f"({', '.join(_listing(images))}); models built in {load_s:.1f} s (not counted)")
    print(f"models: {', '.join(names.values())}")
    print(f"peak: published {peak_spec or 'unknown'} TFLOP/s, measured bf16 matmul {peak_meas:.1f} TFLOP/s" if peak_meas
          else "peak: not measured (dry run)")
    head = ("stage", "s/image", "TFLOP/image", "% of published peak", "% of measured matmul", "peak GPU memory GiB")
    print("| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"total wall time: {total:.0f} s (budget {args.budget:.0f} s)")
    if total > args.budget:
        failures.append(f"total wall time {total:.0f} s is over the budget of {args.budget:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def _model_names(dry: bool) -> dict[str, str]:
    if dry:
        names = {"clip": "clip:tiny", "sam": "sam:tiny", "dinov2": "dinov2:tiny", "blip": "blip:tiny"}
        sam2 = "sam2:tiny"
    else:
        names = {"clip": "clip:ViT-L-14/random", "sam": "sam:vit_h/random", "dinov2": "dinov2:dinov2_vitl14/random",
                 "blip": "blip:itm-large-coco/random"}
        sam2 = "sam2:hiera_large/random"
    try:
        import sam2 as _  # noqa: F401

        names["sam2"] = sam2
    except ImportError:
        print("note: the sam2 extra is not installed: no SAM 2 row", file=sys.stderr)
    return names


def _load(name: str, device, precision: str):
    from ovlabel.models.registry import load_model, parse_model

    family = name.split(":")[0]
    return load_model(parse_model(name, "sam" if family == "sam2" else family), device, precision)


def _image_folders(src: Path, work: Path, n: int) -> tuple[Path, Path]:
    from ovlabel.io.images import discover_images

    entries = discover_images(src).entries[:n]
    if not entries:
        raise SystemExit(f"FAILED: no images under {src}")
    images, one = work / "images", work / "one"
    for folder, chosen in ((images, entries), (one, entries[:1])):
        folder.mkdir(parents=True)
        for e in chosen:
            shutil.copy(e.path, folder / e.path.name)
    return images, one


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _peaks(device, dry: bool) -> tuple[float | None, float | None]:
    """Published dense bf16 peak (TFLOP/s, None if the device is not in the table) and a measured one."""
    import torch

    if dry:
        return None, None
    name = torch.cuda.get_device_name(device)
    spec = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize(device)
    return spec, 20 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def _stages(models: dict, device, precision: str, args):
    """(name, fn(images_dir, out_dir) -> (images done, outputs written)) for every stage, in order; later
    stages read the runs earlier ones wrote (``ctx``)."""
    from ovlabel.config import AutoMaskConfig, PseudoLabelConfig, RefineConfig, SegmentConfig, TrainAlignConfig
    from ovlabel.salience_config import SalienceRunConfig

    dev = str(device)
    ctx: dict[str, Path] = {}
    seg = {}

    def pseudo(family):
        def fn(images, out):
            from ovlabel.labelling.stage1 import label as run

            if family not in seg:  # the stage12 benchmark's threshold: ~64 masks per image from random weights
                from stage12 import _iou_threshold

                first = next(iter(sorted(images.iterdir())))
                from ovlabel.io.images import decode_image, read_file

                ns = argparse.Namespace(points_per_side=args.points_per_side, target_masks=64)
                thr = _iou_threshold(models[family], decode_image(read_file(first)[0]), ns)
                seg[family] = AutoMaskConfig(points_per_side=args.points_per_side, pred_iou_thresh=thr,
                                             stability_score_thresh=0.0, box_nms_thresh=0.7)
            cfg = PseudoLabelConfig(vocab="coco-stuff", device=dev, precision=precision, automask=seg[family],
                                    progress=False)
            s = run(images, out, cfg, models={"clip": models["clip"], "sam": models[family]})
            ctx.setdefault(f"run:{images.name}", out)
            return s.labelled, s.masks, s.failures
        return fn

    def classify(classifier):
        def fn(images, out):
            from ovlabel.labelling.stage1 import classify_masks

            shutil.copytree(ctx[f"run:{images.name}"], out)
            s = classify_masks(out, {"classify": {"classifier": classifier}, "device": dev, "precision": precision,
                                     "progress": False}, models={"clip": models["clip"], "sam": models["sam"]})
            return s.labelled, s.masks, s.failures
        return fn

    def salience(images, out):
        from ovlabel.labelling.salience import salience as run

        s = run(images, out, SalienceRunConfig(vocab="voc", device=dev, precision=precision, progress=False),
                model=models["blip"])
        ctx[f"salience:{images.name}"] = out
        return s.labelled, s.masks, s.failures

    def refine(images, out):
        from ovlabel.labelling.refine import refine as run

        s = run(ctx[f"salience:{images.name}"], out, RefineConfig(workers=2, progress=False))
        return s.refined, s.masks, s.failures

    def train_align(images, out):
        from ovlabel.training.align import train

        cfg = TrainAlignConfig(epochs=1, batch_size=2, device=dev, precision=precision, progress=False,
                               feature_cache="none")
        s = train(ctx[f"run:{images.name}"], out, cfg, models={"dinov2": models["dinov2"], "clip": models["clip"]})
        ctx[f"ckpt:{images.name}"] = out
        return s.images, s.epochs_done, s.failures

    def segment(images, out):
        from ovlabel.labelling.segment import segment as run

        cfg = SegmentConfig(classes="voc", checkpoint=str(ctx[f"ckpt:{images.name}"]), device=dev,
                            precision=precision, progress=False)
        s = run(images, out, cfg, models={"dinov2": models["dinov2"], "clip": models["clip"]})
        return s.labelled, s.masks, s.failures

    out = [("pseudo-label 1.1+1.2, SAM ViT-H" if "sam:vit_h" in models["sam"].identity["spec"] else "pseudo-label 1.1+1.2, SAM", pseudo("sam"))]
    if "sam2" in models:
        out.append(("pseudo-label 1.1+1.2, SAM 2", pseudo("sam2")))
    out += [("classify-masks ovseg", classify("ovseg")), ("classify-masks ensemble", classify("ensemble")),
            ("salience (BLIP ITM)", salience), ("refine (CRF, CPU)", refine), ("train-align, 1 epoch", train_align),
            ("segment", segment)]
    return out


def _measure(name, fn, images: Path, one: Path, work: Path, device, peak_spec, peak_meas) -> tuple:
    """FLOPs from a counted pass on ``one``, then the timed pass on ``images``; raises on a bad result."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    slug = "".join(c if c.isalnum() else "-" for c in name)
    n1, _, fails = fn(one, work / f"{slug}-warm")  # kernels, allocator, text-feature cache
    if fails or not n1:
        raise RuntimeError(f"warm-up pass: {n1} images done, failures {fails}")
    counter = FlopCounterMode(display=False)
    with counter:
        n1, _, fails = fn(one, work / f"{slug}-counted")
    if fails or not n1:
        raise RuntimeError(f"counted pass: {n1} images done, failures {fails}")
    flops = counter.get_total_flops() / n1
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    n, outputs, fails = fn(images, work / f"{slug}-timed")
    if cuda:
        torch.cuda.synchronize(device)
    per = (time.perf_counter() - t0) / max(n, 1)
    if fails or not n or not outputs:
        raise RuntimeError(f"timed pass: {n} images done, {outputs} outputs, failures {fails}")
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    if cuda and peak_mem < 2**-10 and "CPU" not in name:
        raise RuntimeError(f"peak GPU memory {peak_mem * 2**30:.0f} B: the stage did not run on the GPU")
    eff = lambda peak: f"{100 * flops / per / (peak * 1e12):.1f}" if peak and flops else "n/a"  # noqa: E731
    return (name, f"{per:.3f}", f"{flops / 1e12:.3f}", eff(peak_spec), eff(peak_meas), f"{peak_mem:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from ovlabel.malloc import reexec_with_malloc_tuning

    reexec_with_malloc_tuning([sys.executable, *sys.argv])
    sys.exit(main())
