"""Stage 1.1 + 1.2 against the naive recipe, full-size architectures (random weights: timing only).

ovlabel: ``pseudo-label`` with both stages on the same images and models: one CLIP crop pass and one SAM
image embedding per image, shared by Stage 1.1's point queries and Stage 1.2's automatic masks.

naive: what one would write from the same libraries: segment-anything's ``SamAutomaticMaskGenerator`` run
from scratch on each image (its own image embedding, masks upsampled to full resolution before filtering),
then one CLIP forward per masked crop, unbatched, classified against the same class text features.

Both use the same point grid and the same filters, and no area bounds, so that both keep the same masks;
the table prints how many each kept. Random weights make SAM's masks near-identical blobs that box NMS
would merge into one, so NMS is off (``--box-nms-thresh 1``) and the predicted-IoU threshold is set, from
one untimed decoder pass over the first image, to keep ``--target-masks`` masks per image (real SAM keeps
tens to a hundred per COCO photo with its defaults). Text features are computed once,
before timing, for both. The "mandatory encoder passes" are the SAM image encoder and the CLIP forwards
ovlabel cannot avoid (Stage 1.1's crops, and the masked crops if the classifier needs them), timed inside
the same run.

    python benchmarks/stage12.py                                   # ViT-L-14 + SAM ViT-H, 2 images
    python benchmarks/stage12.py --clip clip:ViT-B-16/random --sam sam:vit_b/random --images-max 4
    python benchmarks/stage12.py --compare --sam sam:vit_b/random --images-max 1   # decoder variants only
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import uptime
from stage11 import _time_method  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO / "sample_data"))
    ap.add_argument("--images-max", type=int, default=2, help="first N images of --images (sorted)")
    ap.add_argument("--clip", default="clip:ViT-L-14/random")
    ap.add_argument("--sam", default="sam:vit_h/random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--target-masks", type=int, default=64, help="masks kept per image (sets the IoU threshold)")
    ap.add_argument("--box-nms-thresh", type=float, default=1.0)
    ap.add_argument("--classifier", default="fmbseg", choices=["fmbseg", "ovseg", "ensemble"])
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--compare", action="store_true", help="time Stage 1.2 decoder variants instead (stage12_compare.py)")
    ap.add_argument("--repeats", type=int, default=2, help="--compare: interleaved rounds")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[128], help="--compare: extra points_per_batch values")
    ap.add_argument("--compile", action="store_true", help="--compare: also time torch.compile")
    ap.add_argument("--skip-logit", type=float, nargs="*", default=[8.5], help="--compare: skip_covered logit thresholds")
    ap.add_argument("--micro", type=int, default=0, help="--compare: instead, one decoder call of N prompts, variants")
    ap.add_argument("--encoders", nargs="*", default=None,
                    help="--compare: instead, time these SAM / SAM 2 image encoders on the first image")
    ap.add_argument("--fake-scenes", type=int, default=0,
                    help="--compare: instead, full grid vs skip_covered with FakeSam on N synthetic scenes")
    args = ap.parse_args()
    if args.compare:
        return compare(args)
    cache = tempfile.TemporaryDirectory()
    os.environ["OVLABEL_CACHE"] = cache.name

    import torch

    from ovlabel.config import AutoMaskConfig, ClassifyConfig, PseudoLabelConfig
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.io.images import decode_image, discover_images, read_file
    from ovlabel.labelling.stage1 import label as run
    from ovlabel.models.registry import load_model, parse_model
    from ovlabel.text import class_text_features
    from ovlabel.vocab import load_templates, load_vocabulary

    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    clip = load_model(parse_model(args.clip, "clip"), device, precision)
    sam = load_model(parse_model(args.sam, "sam"), device, precision)
    vocab = load_vocabulary("coco-stuff")
    for t in ("fmbseg", "vild"):  # text once, outside the timings, for both recipes
        class_text_features(clip, vocab, load_templates(t))
    text = class_text_features(clip, vocab, load_templates("vild"))

    entries = discover_images(args.images).entries[: args.images_max]
    images = [decode_image(read_file(e.path)[0]) for e in entries]
    folder = tempfile.TemporaryDirectory()
    for e in entries:
        shutil.copy(e.path, Path(folder.name) / e.path.name)

    print("[choosing the IoU threshold: one untimed decoder pass]", file=sys.stderr, flush=True)
    seg = AutoMaskConfig(
        points_per_side=args.points_per_side, pred_iou_thresh=_iou_threshold(sam, images[0], args),
        stability_score_thresh=0.0, box_nms_thresh=args.box_nms_thresh, min_area=0.0, max_area=1.0,
    )
    cfg = PseudoLabelConfig(
        vocab="coco-stuff", device=args.device, precision=args.precision, automask=seg,
        classify=ClassifyConfig(classifier=args.classifier), progress=False,
    )
    timers: dict[str, float] = {}
    for obj, name in [(clip, "encode_crops"), (sam, "embed"), (sam, "decode"), (sam, "upscale")]:
        _time_method(obj, name, timers, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as out:
        sync()
        t0 = time.perf_counter()
        summary = run(folder.name, Path(out) / "run", cfg, models={"clip": clip, "sam": sam})
        sync()
        ours = time.perf_counter() - t0
        print(f"[ovlabel: {ours:.1f} s for {len(images)} images]", file=sys.stderr, flush=True)
        import pyarrow.parquet as pq

        sources = pq.read_table(Path(out) / "run" / "masks.parquet").column("source").to_pylist()
    n = summary.labelled
    ours_masks = sources.count("stage1.2") / n
    encoders = (timers.get("encode_crops", 0) + timers.get("embed", 0)) / n
    stats = summary.stats

    naive, naive_masks = float("nan"), float("nan")
    if seg.pred_iou_thresh <= 0 and not args.skip_naive:
        # SamAutomaticMaskGenerator applies its IoU filter only for a threshold > 0: it would keep, encode
        # and classify every candidate mask, which is no like-for-like comparison.
        print(f"[naive skipped: the IoU threshold for {args.target_masks} masks is {seg.pred_iou_thresh:.4f} <= 0 "
              f"(these random weights predict negative IoUs), which SamAutomaticMaskGenerator ignores]",
              file=sys.stderr, flush=True)
    elif not args.skip_naive:
        naive, naive_masks = _naive(images, sam, clip, text, seg, device, sync)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"Stage 1.1 + 1.2 vs naive: {args.clip} + {args.sam}; {args.points_per_side}x{args.points_per_side} points; "
          f"classifier {args.classifier}; vocabulary coco-stuff (171)")
    print(f"ran on: {where}; precision {precision}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"images: {n} ({', '.join(e.rel for e in entries)}); model loading and text encoding not counted")
    print(f"filters: predicted IoU >= {seg.pred_iou_thresh:.4f} (for {args.target_masks} masks), box NMS {seg.box_nms_thresh}, "
          f"stability off, no area bounds")
    print()
    per = {k: v / n for k, v in timers.items()}
    rows = [
        ("ovlabel seconds per image (1.1 + 1.2)", f"{ours / n:.2f}"),
        ("  SAM image encoder", f"{per.get('embed', 0):.2f}"),
        ("  CLIP forwards (crops; masked crops if ovseg/ensemble)", f"{per.get('encode_crops', 0):.2f}"),
        ("  SAM mask decoder (1.1 points + 1.2 grid)", f"{per.get('decode', 0):.2f}"),
        ("  SAM mask upsampling", f"{per.get('upscale', 0):.2f}"),
        ("  everything else", f"{ours / n - sum(per.values()):.2f}"),
        ("mandatory encoder passes, seconds per image", f"{encoders:.2f}"),
        ("ovlabel wall / mandatory encoder passes", f"{ours / n / encoders:.2f}"),
        ("SAM image-encoder passes per image", f"{stats.get('sam_image_encoder_passes', 0) / n:.2f}"),
        ("Stage 1.2 masks per image, ovlabel", f"{ours_masks:.1f}"),
        ("naive seconds per image (AMG + one CLIP pass per mask)", f"{naive:.2f}"),
        ("naive masks per image", f"{naive_masks:.1f}"),
        ("naive / ovlabel", f"{naive / (ours / n):.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':{w}} | {'value':>8} |")
    print(f"|{'-' * (w + 2)}|{'-' * 10}|")
    for k, v in rows:
        print(f"| {k:{w}} | {v:>8} |")


def compare(args) -> None:
    """``--compare``: Stage 1.2 decoder variants, interleaved, on the same SAM embeddings."""

    import torch
    from stage12_compare import encoders, fake_scenes, micro, run_compare

    from ovlabel.config import AutoMaskConfig
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.io.images import decode_image, discover_images, read_file
    from ovlabel.models.registry import load_model, parse_model

    if args.fake_scenes:
        print(f"skip_covered vs the full {args.points_per_side}x{args.points_per_side} grid, FakeSam (segments by colour), "
              f"synthetic flat-colour scenes 256x256, SAM's default filters, skip_stride 4")
        print("| measure | value |\n|---|---|")
        for k, v in fake_scenes(args.fake_scenes, args.points_per_side, 4):
            print(f"| {k} | {v} |")
        return
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.encoders:
        image = decode_image(read_file(discover_images(args.images).entries[0].path)[0])
        rows = encoders(args.encoders, image, args.repeats, device, precision, sync)
        load = uptime()
        print(f"image encoders, {image.shape[1]}x{image.shape[0]} image, {args.repeats} interleaved rounds, "
              f"precision {precision}, torch {torch.__version__}, {torch.get_num_threads()} threads; load after: {load}")
        print("| model | encoder s/image | first / model |\n|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    sam = load_model(parse_model(args.sam, "sam"), device, precision, sdpa=False)
    entries = discover_images(args.images).entries[: args.images_max]
    images = [decode_image(read_file(e.path)[0]) for e in entries]
    if args.micro:
        with torch.inference_mode():
            (emb,) = sam.embed(images[:1])
        rows = micro(sam, emb, args.repeats, args.micro, sync, args.compile)
        load = uptime()
        print(f"SAM mask decoder ({args.sam}), one call of {args.micro} grid prompts on {entries[0].rel}, "
              f"{args.repeats} interleaved rounds, {torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"load after: {load}")
        print("| variant | s per call | whole decoder, explicit attention / variant |\n|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    thresh = _iou_threshold(sam, images[0], args)
    seg = AutoMaskConfig(points_per_side=args.points_per_side, pred_iou_thresh=thresh, stability_score_thresh=0.0,
                         box_nms_thresh=args.box_nms_thresh, min_area=0.0, max_area=1.0)
    with torch.inference_mode():
        embeddings = [sam.embed([img])[0] for img in images]
    load = uptime()
    rows, extra = run_compare(sam, embeddings, seg, args, sync)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"Stage 1.2 decoder variants: {args.sam}; {args.points_per_side}x{args.points_per_side} points; "
          f"IoU >= {thresh:.4f} (~{args.target_masks} masks/image), box NMS {args.box_nms_thresh}, stability off")
    print(f"ran on: {where}; precision {precision}; torch {torch.__version__}; {len(images)} image(s): "
          f"{', '.join(e.rel for e in entries)}; {args.repeats} interleaved rounds")
    print(f"load before: {load}")
    print(f"load after:  {uptime()}")
    for k, v in extra.items():
        print(f"{k}: {v}")
    print()
    head = ("variant", "s/image", "CPU s/image", "before / variant", "prompts/image", "prompts upscaled/image", "masks/image",
            "masks == before", "recall@0.9")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def _iou_threshold(sam, image, args) -> float:
    """The predicted IoU of the ``target_masks``-th best grid mask of ``image`` (one untimed pass)."""
    import torch

    from ovlabel.stages.automask import point_grid

    with torch.inference_mode():
        (emb,) = sam.embed([image])
        pts = point_grid(args.points_per_side, *image.shape[:2])[:, None]
        ious = torch.cat([
            sam.decode(emb, pts[i : i + 64], torch.ones(len(pts[i : i + 64]), 1, dtype=torch.int64))[1].flatten()
            for i in range(0, len(pts), 64)
        ])
    sam.stats.clear()
    # Random weights predict many equal IoUs: take the threshold (between distinct values) whose kept count
    # is closest to the target, rather than one that a tie turns into thousands of masks.
    values = ious.sort(descending=True).values
    distinct = torch.unique(values).flip(0)  # descending
    kept = torch.stack([(values >= v).sum() for v in distinct])
    best = int((kept - args.target_masks).abs().argmin())
    return float(distinct[best])


def _naive(images, sam, clip, text, seg, device, sync) -> tuple[float, float]:
    """Seconds and masks per image of the naive recipe (see the module docstring)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from segment_anything import SamAutomaticMaskGenerator

    from ovlabel.stages.classify import masked_crops

    gen = SamAutomaticMaskGenerator(
        sam.sam, points_per_side=seg.points_per_side, points_per_batch=seg.points_per_batch,
        pred_iou_thresh=seg.pred_iou_thresh, stability_score_thresh=seg.stability_score_thresh,
        stability_score_offset=seg.stability_score_offset, box_nms_thresh=seg.box_nms_thresh,
        min_mask_region_area=0, output_mode="binary_mask",
    )
    size = clip.input_size
    total, count = 0.0, 0
    for img in images:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            anns = gen.generate(img)
            for a in anns:
                m = torch.from_numpy(a["segmentation"])[None]
                x, y, w, h = a["bbox"]
                crop = masked_crops(img, m, np.array([[x, y, x + w, y + h]]), size, clip.fill_color)[0]
                feat = clip.model.encode_image(clip.prepare(crop, (size, size))[None])
                int((F.normalize(feat.float(), dim=-1) @ text.T).argmax())
        sync()
        total += time.perf_counter() - t0
        count += len(anns)
        print(f"[naive: image done, {len(anns)} masks, {total:.1f} s so far]", file=sys.stderr, flush=True)
    return total / len(images), count / len(images)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ovlabel.malloc import reexec_with_malloc_tuning

    reexec_with_malloc_tuning([sys.executable, *sys.argv])  # the CLI runs with it; so do the timings
    sys.exit(main())
