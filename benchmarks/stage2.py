"""Stage 2 speed with full-size architectures (random weights: timing only, labels meaningless).

1. ``segment``: seconds per image of the whole per-image computation (DINOv2 forward, alignment module,
   similarity with every class, bilinear upsampling to full resolution + argmax, one RLE mask per class)
   against one DINOv2 forward alone (resize + normalise + encoder) on the same image. The goal is that
   everything Stage 2 adds costs at most 10 % of the encoder forward. Measured twice: on the whole image
   at ``--resolution`` (no protocol), and with the command's default protocol (FMbSeg's: short side 448,
   448-px windows, stride 224), there against the DINOv2 forwards of the same windows. Also the wall time
   of ``segment`` as a command (reading images, writing the run directory), text features cached.
2. ``train-align``: seconds per SGD step (batch of 5 images) with features read from the fp16 cache:
   cache reads, module forward, loss over every labelled patch, backward, SGD step.

``dinov2:ARCH/random`` builds the DINOv2 architecture (timm's port, via ovlabel's offline torch.hub) with
random weights: the same computation as the real checkpoint.

    python benchmarks/stage2.py                                  # ViT-L/14 (FMbSeg) + CLIP ViT-L-14 text
    python benchmarks/stage2.py --dinov2 dinov2:dinov2_vitb14/random --device cpu
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

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO / "sample_data"))
    ap.add_argument("--dinov2", default="dinov2:dinov2_vitl14/random")
    ap.add_argument("--clip", default="clip:ViT-L-14/random")
    ap.add_argument("--classes", default="coco-stuff")
    ap.add_argument("--resolution", type=int, default=448)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes per image (after one warm-up); the median is kept")
    ap.add_argument("--train-steps", type=int, default=4)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    os.environ["OVLABEL_CACHE"] = tmp.name

    import torch

    from ovlabel.config import SegmentConfig
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.features import patch_grid
    from ovlabel.io.images import decode_image, discover_images, read_file
    from ovlabel.labelling.segment import segment
    from ovlabel.models.registry import load_model, parse_model
    from ovlabel.stages import segment as seg
    from ovlabel.stages.align import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_module, save_weights
    from ovlabel.stages.segment_infer import queries, resolve
    from ovlabel.text import class_text_features
    from ovlabel.vocab import load_templates, load_vocabulary

    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed(fn, *a):
        """``(seconds, fn(*a))``, synchronised on CUDA."""
        sync()
        t0 = time.perf_counter()
        out = fn(*a)
        sync()
        return time.perf_counter() - t0, out

    load_s, (enc, clip) = timed(lambda: (load_model(parse_model(args.dinov2, "dinov2"), device, precision),
                                         load_model(parse_model(args.clip, "clip"), device, precision)))
    vocab = load_vocabulary(args.classes)
    templates = load_templates("fmbseg")
    text_s, text = timed(lambda: class_text_features(clip, vocab, templates))
    dims = {"in_dim": enc.embed_dim, "out_dim": int(text.shape[1]), "num_heads": None, "mlp_ratio": 4.0}
    module = build_module(dims, 0).to(device).eval().requires_grad_(False)
    config = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "module": module.dims(),
        "vision_encoder": enc.identity, "text_encoder": clip.identity, "templates": templates.to_json(),
        "resolution": args.resolution, "max_aspect": 2.0, "patch_size": 14, "temperature": 0.07, "epoch": 0, "epochs": 0,
    }
    segmenter = seg.AlignedSegmenter(enc, module, text, config, args.resolution, False, precision)
    inf = resolve(SegmentConfig(classes=args.classes), vocab, config)  # the command's default protocol
    prompted, owner = queries(vocab, inf)
    text_q = text if len(prompted) == len(vocab) else class_text_features(clip, prompted, templates)
    protocol = seg.AlignedSegmenter(enc, module, text_q, config, inf.resolution, False, precision, inference=inf,
                                    owner=owner)
    entries = discover_images(args.images).entries
    images = [decode_image(read_file(e.path)[0]) for e in entries]

    # 1. per-image: encoder alone, head alone (on the encoder's features), whole segment computation
    segmenter.process([images[0]])  # warm-up
    enc_s, head_s, full_s, grids = [], [], [], []
    for img in images:
        grid = patch_grid(*img.shape[:2], args.resolution, enc.patch_size, 2.0)
        grids.append(grid)
        e, h, f = [], [], []
        for _ in range(args.repeat):
            t, feats = timed(lambda im, g: enc.encode(enc.prepare(im, g)[None]), img, grid)
            e.append(t)
            h.append(timed(_head, module, feats, text)[0])
            f.append(timed(segmenter.process, [img])[0])
        enc_s.append(statistics.median(e))
        head_s.append(statistics.median(h))
        full_s.append(statistics.median(f))
    enc_m, head_m, full_m = (statistics.mean(v) for v in (enc_s, head_s, full_s))

    # 1b. the default protocol: the windows' encoder forwards alone against the whole prediction
    protocol.process([images[0]])  # warm-up
    win_s, prot_s, n_windows = [], [], []
    for img in images:
        crops = _windows(img, inf)
        n_windows.append(len(crops))
        e, f = [], []
        for _ in range(args.repeat):
            e.append(sum(timed(lambda c: enc.encode(enc.prepare(c, protocol.window_grid(c))[None]), c)[0] for c in crops))
            f.append(timed(protocol.process, [img])[0])
        win_s.append(statistics.median(e))
        prot_s.append(statistics.median(f))
    win_m, prot_m = statistics.mean(win_s), statistics.mean(prot_s)

    # the command: a checkpoint folder, injected models, text features already cached on disk
    ckpt = Path(tmp.name) / "ckpt"
    save_weights(ckpt, module.cpu(), config)
    module.to(device)
    cfg = SegmentConfig(classes=args.classes, checkpoint=str(ckpt), device=args.device, precision=args.precision, progress=False)
    run_s, summary = timed(lambda: segment(args.images, Path(tmp.name) / "run", cfg, models={"dinov2": enc, "clip": clip}))

    # 2. train-align steps from cached features
    step_s, read_s = _train_steps(enc, text, dims, args, device, precision, Path(tmp.name), timed)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"Stage 2 benchmark: {args.dinov2} (timm's DINOv2 architecture via ovlabel's offline hub, random weights) "
          f"+ {args.clip} text; {len(vocab)} classes ({args.classes}); short side {args.resolution} px")
    print(f"ran on: {where}; precision {precision}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"images: {len(images)} from {args.images}, patch grids {grids}; model loading {load_s:.1f} s and "
          f"text features {text_s:.1f} s (once per run, cached) not counted")
    print()
    rows = [
        ("DINOv2 forward alone (resize + normalise + encoder), s/image", f"{enc_m:.3f}"),
        ("alignment module + similarity with every class, s/image", f"{head_m:.4f}"),
        ("segment per image (all of the above + upsample/argmax + RLE), s/image", f"{full_m:.3f}"),
        ("  Stage 2 overhead over the encoder forward", f"{100 * (full_m - enc_m) / enc_m:.1f} %"),
        ("  of which the alignment module + similarity", f"{100 * head_m / enc_m:.1f} %"),
        (f"default protocol: DINOv2 forwards of the windows alone ({n_windows} per image), s/image", f"{win_m:.3f}"),
        ("default protocol: segment per image (windows, averaging, upsample/argmax, RLE), s/image", f"{prot_m:.3f}"),
        ("  Stage 2 overhead over the windows' encoder forwards", f"{100 * (prot_m - win_m) / win_m:.1f} %"),
        ("segment command wall, s/image (decode, write run directory)", f"{run_s / max(summary.labelled, 1):.3f}"),
        (f"train-align step, batch 5 x {args.resolution}^2 features from cache, s/step", f"{step_s:.3f}"),
        ("  of which reading 5 cached fp16 feature files", f"{read_s:.4f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':{w}} | {'value':>9} |")
    print(f"|{'-' * (w + 2)}|{'-' * 11}|")
    for k, v in rows:
        print(f"| {k:{w}} | {v:>9} |")


def _windows(image, inf) -> list:
    """The protocol's window crops of ``image``, as ``segment`` encodes them."""
    from ovlabel.stages.segment_infer import protocol_windows

    image, boxes = protocol_windows(image, inf)
    return [np.ascontiguousarray(image[y1:y2, x1:x2]) for y1, y2, x1, x2 in boxes]


def _head(module, feats, text):
    """The alignment module and the similarity with every class, on one image's features ``(1, r, c, D)``."""
    import torch

    with torch.inference_mode():
        z = module(feats.reshape(1, feats.shape[1] * feats.shape[2], -1))[0]
        return text @ z.float().T


def _train_steps(enc, text, dims, args, device, precision, tmp: Path, timed):
    """Time ``train._batch_features`` (cache hits) + ``train._step`` on 5 square images' worth of random
    features, 80 % of patches labelled over every class."""
    import torch

    from ovlabel.config import TrainAlignConfig
    from ovlabel.features import FeatureCache
    from ovlabel.stages.align import build_module
    from ovlabel.stages.trainset import TrainImage
    from ovlabel.training import align as tr

    g = args.resolution // 14
    rng = np.random.default_rng(0)
    cache = FeatureCache(tmp / "features", "bench")
    batch = []
    for i in range(5):
        sha = f"{i:064x}"
        cache.save(sha, (g, g), rng.standard_normal((g, g, enc.embed_dim)).astype(np.float16))
        labels = np.where(rng.random(g * g) < 0.8, rng.integers(0, len(text), g * g), -1)
        batch.append(TrainImage(f"img{i}", tmp / "none", sha, (g, g), labels))
    module = build_module(dims, 0).to(device)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    lut = np.append(np.arange(len(text)), -1)
    cfg = TrainAlignConfig(resolution=args.resolution, device=args.device, precision=args.precision)
    summary = tr.TrainSummary(out=tmp)
    steps, reads = [], []
    for i in range(args.train_steps + 1):
        r, (feats, labels) = timed(tr._batch_features, batch, enc, cache, {}, summary, cfg, device)
        s, _ = timed(tr._step, module, opt, feats, labels, lut, text, 0.07, device, precision)
        if i:  # the first is a warm-up
            steps.append(r + s)
            reads.append(r)
    return statistics.median(steps), statistics.median(reads)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ovlabel.malloc import reexec_with_malloc_tuning

    reexec_with_malloc_tuning([sys.executable, *sys.argv])  # the CLI runs with it; so do the timings
    sys.exit(main())
