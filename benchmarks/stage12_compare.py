"""Stage 1.2's mask decoder, variant against variant, interleaved on the same image embeddings
(``python benchmarks/stage12.py --compare``; see that script for the options).

Variants (each one ``automask.generate`` over the whole grid of one image, SAM's own image embedding
computed once beforehand and shared):

- ``before``: the decoder as it was: segment-anything's explicit attention, mask upscaling for every prompt
  and output, the IoU filter after it (``SamModel.decode`` then the filter);
- ``filtered``: upscaling only for outputs that pass the IoU filter (``SamModel.decode_filtered``);
- ``filtered+sdpa``: and the attention through ``F.scaled_dot_product_attention`` (the default);
- ``...,batch=N``: the default with N prompts per decoder call;
- ``compile``: the default under ``torch.compile`` (first call, compilation, timed apart);
- ``skip_covered[,logit=T]``: the default with TinySAM's two-pass grid; its masks are matched against the
  ``filtered+sdpa`` masks of the same image (recall: fraction of full-grid masks with a mask of IoU >= 0.9).

Rounds: every variant once per round, in the same order, ``--repeats`` rounds; the table gives each
variant's median wall and process-CPU seconds per image and its wall-time ratio to ``before`` from the
same round (median over rounds).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def mask_recall(reference: torch.Tensor, found: torch.Tensor, thresh: float = 0.9) -> float:
    """Fraction of ``reference`` masks bool ``(N, H, W)`` with a ``found`` mask ``(M, H, W)`` of IoU >= thresh."""
    if len(reference) == 0:
        return float("nan")
    if len(found) == 0:
        return 0.0
    a = reference.flatten(1).float()
    b = found.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / union.clamp(min=1)
    return float((iou.max(dim=1).values >= thresh).float().mean())


def _legacy_decode_filtered(sam):
    """The decoder as it was before: every prompt's every output decoded, then the IoU filter."""

    def decode_filtered(emb, coords, labels, min_iou, multimask=True):
        low, iou = sam.decode(emb, coords, labels, multimask)
        keep = iou >= min_iou
        return keep, low[keep], iou

    return decode_filtered


def run_compare(sam, embeddings, seg, args, sync) -> list[tuple[str, str, str, str]]:
    """Time the variants (module docstring) on ``embeddings``; returns table rows."""
    from dataclasses import replace

    from ovlabel.models.sam_decoder import compiled, decode_masks, decode_tokens, use_sdpa
    from ovlabel.stages import automask

    decoder = sam.sam.mask_decoder
    real_decode_filtered = sam.decode_filtered

    def setup(sdpa, legacy=False, compile_=False):
        use_sdpa(decoder, sdpa)
        sam.decode_filtered = _legacy_decode_filtered(sam) if legacy else real_decode_filtered
        sam._decode_tokens, sam._decode_masks = (compiled_fns if compile_ else (decode_tokens, decode_masks))

    compiled_fns = compiled(decode_tokens, decode_masks) if args.compile else None
    variants = [("before", dict(sdpa=False, legacy=True), seg), ("filtered", dict(sdpa=False), seg),
                ("filtered+sdpa", dict(sdpa=True), seg)]
    variants += [(f"filtered+sdpa,batch={b}", dict(sdpa=True), replace(seg, points_per_batch=b)) for b in args.batch_sizes]
    if args.compile:
        variants.append(("filtered+sdpa+compile", dict(sdpa=True, compile_=True), seg))
    for t in args.skip_logit:
        name = "skip_covered" + ("" if t == seg.skip_logit_thresh else f",logit={t:g}")
        variants.append((name, dict(sdpa=True), replace(seg, skip_covered=True, skip_logit_thresh=t)))

    extra = {}
    if args.compile:  # the first compiled call compiles: timed on its own, not in the rounds
        setup(True, compile_=True)
        sync()
        t0 = time.perf_counter()
        automask.generate(sam, embeddings[0], seg)
        sync()
        extra["compile: first image (compilation + run), s"] = f"{time.perf_counter() - t0:.1f}"
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    outputs: dict[str, list] = {name: [] for name, _, _ in variants}
    prompts: dict[str, list[int]] = {name: [] for name, _, _ in variants}
    upscaled: dict[str, list[int]] = {name: [] for name, _, _ in variants}
    for r in range(args.repeats):
        round_t = {}
        for name, kw, cfg in variants:
            setup(**kw)
            total, before_prompts, before_up = 0.0, sam.stats["sam_prompts"], sam.stats["sam_prompts_upscaled"]
            c0 = time.process_time()
            for emb in embeddings:
                sync()
                t0 = time.perf_counter()
                out = automask.generate(sam, emb, cfg)
                sync()
                total += time.perf_counter() - t0
                if r == 0:
                    outputs[name].append(out.masks)
            cpu[name].append((time.process_time() - c0) / len(embeddings))
            prompts[name].append((sam.stats["sam_prompts"] - before_prompts) / len(embeddings))
            upscaled[name].append((sam.stats["sam_prompts_upscaled"] - before_up) / len(embeddings))
            round_t[name] = total / len(embeddings)
            times[name].append(round_t[name])
            print(f"[round {r + 1}: {name}: {round_t[name]:.2f} s/image]", file=sys.stderr, flush=True)
        for name in round_t:
            ratios[name].append(round_t["before"] / round_t[name])
    setup(True)
    rows = []
    for name, _, _ in variants:
        recall = ""
        if name.startswith("skip_covered"):
            rec = [mask_recall(ref, got) for ref, got in zip(outputs["filtered+sdpa"], outputs[name])]
            recall = f"{statistics.mean(rec):.3f}"
        same = ""
        if name in ("filtered", "filtered+sdpa") or name.startswith("filtered+sdpa,"):
            same = str(all(torch.equal(a, b) for a, b in zip(outputs["before"], outputs[name])))
        rows.append((name, f"{statistics.median(times[name]):.2f}", f"{statistics.median(cpu[name]):.2f}",
                     f"{statistics.median(ratios[name]):.2f}",
                     f"{statistics.mean(prompts[name]):.0f}", f"{statistics.mean(upscaled[name]):.0f}",
                     f"{statistics.mean(len(m) for m in outputs[name]):.1f}",
                     same, recall))
    return rows, extra


def synthetic_scene(rng, size: int = 256):
    """An RGB uint8 ``(size, size, 3)`` scene of 3-12 flat-coloured rectangles and disks on a flat
    background: with FakeSam (tests/fakes.py), which segments by exact colour, every region's mask is known."""
    import numpy as np

    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(3, 13))):
        s = int(rng.integers(size // 16, size // 3))
        y0, x0 = (int(v) for v in rng.integers(0, size - s, 2))
        if rng.random() < 0.5:
            region = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
        else:
            region = (yy - y0 - s / 2) ** 2 + (xx - x0 - s / 2) ** 2 < (s / 2) ** 2
        img[region] = rng.integers(0, 256, 3)
    return img


def fake_scenes(n: int, points_per_side: int, stride: int) -> list[tuple[str, str]]:
    """Full grid against ``skip_covered`` with FakeSam on ``n`` synthetic scenes (default AMG filters)."""
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fakes import FakeSam
    from ovlabel.config import AutoMaskConfig
    from ovlabel.stages import automask

    rng = np.random.default_rng(0)
    full_cfg = AutoMaskConfig(points_per_side=points_per_side, min_area=0.0)
    skip_cfg = AutoMaskConfig(points_per_side=points_per_side, min_area=0.0, skip_covered=True, skip_stride=stride)
    prompts = {"full": 0, "skip": 0}
    masks = {"full": 0, "skip": 0}
    recalls = []
    for _ in range(n):
        img = synthetic_scene(rng)
        out = {}
        for name, cfg in (("full", full_cfg), ("skip", skip_cfg)):
            sam = FakeSam()
            (emb,) = sam.embed([img])
            out[name] = automask.generate(sam, emb, cfg).masks
            prompts[name] += sam.stats["sam_prompts"]
            masks[name] += len(out[name])
        recalls.append(mask_recall(out["full"], out["skip"]))
    return [
        ("scenes", str(n)),
        ("prompts/image, full grid", f"{prompts['full'] / n:.0f}"),
        ("prompts/image, skip_covered", f"{prompts['skip'] / n:.1f}"),
        ("decoder work saved (prompts full / skip)", f"{prompts['full'] / prompts['skip']:.2f}x"),
        ("masks/image, full grid / skip_covered", f"{masks['full'] / n:.1f} / {masks['skip'] / n:.1f}"),
        ("recall of full-grid masks (IoU >= 0.9), mean over scenes", f"{statistics.mean(recalls):.3f}"),
        ("scenes with every full-grid mask recovered", f"{sum(r == 1.0 for r in recalls)}/{n}"),
    ]


def encoders(specs: list[str], image, repeats: int, device, precision: str, sync) -> list[tuple[str, ...]]:
    """Image-encoder seconds per image of each SAM / SAM 2 spec on ``image``, interleaved ``repeats`` rounds
    (one untimed warm-up call each); the ratio is to the first spec, per round, median over rounds."""
    from ovlabel.models.registry import load_model, parse_model

    models = [load_model(parse_model(s, "sam"), device, precision) for s in specs]
    for m in models:
        m.embed([image])
    times: dict[str, list[float]] = {s: [] for s in specs}
    for r in range(repeats):
        for spec, m in zip(specs, models):
            sync()
            t0 = time.perf_counter()
            m.embed([image])
            sync()
            times[spec].append(time.perf_counter() - t0)
            print(f"[round {r + 1}: {spec}: {times[spec][-1]:.2f} s]", file=sys.stderr, flush=True)
    first = times[specs[0]]
    return [(s, f"{statistics.median(t):.2f}", f"{statistics.median(a / b for a, b in zip(first, t)):.2f}")
            for s, t in times.items()]


def micro(sam, emb, repeats: int, batch: int, sync, compile_: bool = False) -> list[tuple[str, ...]]:
    """One decoder call of ``batch`` grid prompts, interleaved ``repeats`` rounds: the transformer alone
    (explicit attention / SDPA), the whole decoder unfiltered, and filtered at IoU thresholds that keep
    the mask head for about 75 %, 50 % and 25 % of the prompts (SDPA on)."""
    from ovlabel.models.sam_decoder import use_sdpa
    from ovlabel.stages.automask import point_grid

    h, w = emb.original_size
    pts = point_grid(32, h, w)[:batch, None]
    labels = torch.ones(len(pts), 1, dtype=torch.int64)
    _, iou = sam.decode(emb, pts, labels)
    best = iou.max(dim=1).values.sort().values  # a prompt is upscaled if its best output passes
    cuts = {f: float(best[int(len(best) * (1 - f))]) for f in (0.75, 0.5, 0.25)}

    def tokens(on):
        use_sdpa(sam.decoder, on)
        return lambda: sam._tokens(emb, pts, labels, True)

    def full(on):
        use_sdpa(sam.decoder, on)
        return lambda: sam.decode(emb, pts, labels)

    def filtered(f):
        use_sdpa(sam.decoder, True)
        return lambda: sam.decode_filtered(emb, pts, labels, cuts[f])

    variants = [("transformer + IoU head, explicit attention", lambda: tokens(False)),
                ("transformer + IoU head, SDPA", lambda: tokens(True)),
                ("whole decoder, explicit attention", lambda: full(False)),
                ("whole decoder, SDPA", lambda: full(True))]
    variants += [(f"whole decoder, SDPA, mask head for {int(f * 100)} % of prompts", (lambda f=f: filtered(f)))
                 for f in (0.75, 0.5, 0.25)]
    if compile_:  # the transformer half only, one shape: no recompilation in the rounds
        from ovlabel.models.sam_decoder import compiled, decode_tokens

        fast = compiled(decode_tokens)[0]
        use_sdpa(sam.decoder, True)
        eager, sam._decode_tokens = sam._decode_tokens, fast
        t0 = time.perf_counter()
        sam._tokens(emb, pts, labels, True)
        print(f"[torch.compile of the transformer half: first call {time.perf_counter() - t0:.1f} s]",
              file=sys.stderr, flush=True)
        sam._decode_tokens = eager

        def compiled_tokens():
            use_sdpa(sam.decoder, True)

            def run():
                sam._decode_tokens = fast
                try:
                    sam._tokens(emb, pts, labels, True)
                finally:
                    sam._decode_tokens = eager
            return run

        variants.append(("transformer + IoU head, SDPA, torch.compile", compiled_tokens))
    times: dict[str, list[float]] = {n: [] for n, _ in variants}
    with torch.inference_mode():
        for r in range(repeats):
            for name, make in variants:
                fn = make()
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
            print(f"[micro round {r + 1} done]", file=sys.stderr, flush=True)
    use_sdpa(sam.decoder, True)
    ref = times["whole decoder, explicit attention"]
    return [(n, f"{statistics.median(t):.2f}", f"{statistics.median(a / b for a, b in zip(ref, t)):.2f}")
            for n, t in times.items()]
