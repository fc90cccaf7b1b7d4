"""How ``segment`` turns a trained alignment module into label maps under an evaluation protocol.

FMbSeg (seed 003 §4.1) is evaluated with "the evaluation protocol of TCL": images resized so their short
side is 448 px and labelled by sliding 448-px windows with a 224-px stride (mmseg's ``slide`` mode), one
template, no post-refinement; for PV-21 "we add stuff classes from CS-171 as background categories". The
SCLIP family instead prompts a few stuff words for the background and calls a pixel background when its
highest class probability is below a threshold. :mod:`ovlabel.protocols` holds these settings as presets;
:func:`resolve` turns a :class:`ovlabel.config.SegmentConfig` (protocol, explicit options, the checkpoint)
into one :class:`SegmentInference`, and the functions below apply it:

1. **Resize** (:func:`protocol_size`): mmseg ``Resize(scale=(2048, short_side), keep_ratio=True)``: the
   scale is ``min(short_side / short, 2048 / long)``; bilinear, as mmseg's default (PIL's, which smooths
   when shrinking where OpenCV's does not).
2. **Sliding window** (:func:`window_boxes`): mmseg's ``slide_inference`` grid (SCLIP ``clip_segmentor.py``
   ``forward_slide``): windows at multiples of the stride, the last one of a row/column moved back so it
   ends on the border, a window larger than the image shrunk to the image. Each window goes through the
   encoder and the module at its own size (rounded to whole patches); its patch similarities are upsampled
   bilinearly to the window and the windows' similarities are averaged where they overlap. ``window = 0``
   is whole-image inference at the checkpoint's resolution (ovlabel's earlier behaviour).
3. **Queries** (:func:`queries`): every label class is prompted, except the class named ``background``
   when background prompts or a threshold stand for it; the background prompts (e.g. the 91 COCO-Stuff
   stuff classes) are appended, each predicting the background class (or 255 = unlabeled when the class
   list has no background class).
4. **Decision** (:func:`decide`, SCLIP ``postprocess_result``): upsampled to the original image, each pixel
   takes the query with the highest similarity and so its class. With a threshold, the probability is
   ``softmax(logit_scale * similarity)`` over all queries; a pixel whose best probability is below the
   threshold is background. With an area threshold, a non-background class winning no more than that share
   of the pixels won by non-background classes is dropped first (its pixels go to their next best query).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.errors import OvlabelError

#: mmseg's long-side cap of ``Resize(scale=(2048, s), keep_ratio=True)``.
LONG_SIDE_CAP = 2048
#: FMbSeg's protocol (TCL's) when no preset is named: 448-px windows, 224-px stride.
FMBSEG_WINDOW, FMBSEG_STRIDE = 448, 224
#: Without a preset, a class list with a class of this name predicts it with these prompts (FMbSeg §4.1).
BACKGROUND_NAME = "background"
FMBSEG_BACKGROUND_PROMPTS = "coco-stuff-stuff"
#: Label value of pixels without a class.
UNLABELED = 255


@dataclass(frozen=True)
class SegmentInference:
    """The resolved inference settings of one ``segment`` run (what ``run.json`` records).

    ``resolution``: short side (px) images are resized to; ``window``/``stride``: sliding window (px, 0 =
    whole image); ``background_class``: index of the class named ``background`` (None: the class list has
    none); ``background_prompts``: the vocabulary prompted in its place (None: none); ``prompt_background``:
    the background class is prompted by its own name; ``bg_threshold``: minimum top probability (0 = off);
    ``logit_scale``: of that probability; ``area_threshold``: minimum class share (0 = off).
    """

    protocol: str | None
    resolution: int
    window: int
    stride: int
    background_class: int | None
    background_prompts: str | None
    prompt_background: bool
    bg_threshold: float
    logit_scale: float
    area_threshold: float

    def to_json(self) -> dict:
        return asdict(self)


def resolve(cfg, vocab, checkpoint: dict) -> SegmentInference:
    """Resolve ``cfg`` (:class:`ovlabel.config.SegmentConfig`) against its protocol preset (``cfg.protocol``),
    the class list ``vocab`` and the checkpoint's ``config.json`` dict. An explicit option wins over the
    preset, the preset over the defaults (the checkpoint's resolution; FMbSeg's 448/224 window; FMbSeg's
    CS-171 stuff classes for a class list with a ``background`` class; no threshold; logit scale
    ``1 / temperature`` of the checkpoint)."""
    from ovlabel.protocols import get_protocol

    p = get_protocol(cfg.protocol) if cfg.protocol else None
    resolution = cfg.resolution or (p.short_side if p else int(checkpoint["resolution"]))
    window = cfg.window if cfg.window is not None else (p.window if p else FMBSEG_WINDOW)
    stride = cfg.stride if cfg.stride is not None else (p.stride if p else FMBSEG_STRIDE)
    if window and not 0 < stride <= window:
        raise OvlabelError(f"stride={stride} is invalid with window={window}: expected 0 < stride <= window")
    names = [n.strip().lower() for n in vocab.names]
    bg_class = names.index(BACKGROUND_NAME) if BACKGROUND_NAME in names else None
    threshold = cfg.bg_threshold if cfg.bg_threshold is not None else ((p.bg_threshold or 0.0) if p else 0.0)
    if cfg.background_prompts is not None:
        prompts = None if cfg.background_prompts.strip().lower() == "none" else cfg.background_prompts
        explicit_none = prompts is None
    else:
        explicit_none = False
        if p is not None:
            prompts = p.bg_prompts if (bg_class is not None or p.background) else None
        else:
            prompts = FMBSEG_BACKGROUND_PROMPTS if bg_class is not None else None
    scale = cfg.logit_scale or (p.logit_scale if p and p.logit_scale else 1.0 / float(checkpoint["temperature"]))
    area = cfg.area_threshold if cfg.area_threshold is not None else ((p.area_threshold or 0.0) if p else 0.0)
    if cfg.refine and (threshold > 0 or area > 0):
        raise OvlabelError("--refine does not combine with a background threshold or area rule (the protocols that "
                           "use them apply no refinement): drop --refine, or set --bg-threshold 0 --area-threshold 0")
    # The background class is prompted by its own name only when nothing else can predict it.
    prompt_bg = bg_class is not None and (explicit_none or (prompts is None and threshold <= 0))
    return SegmentInference(
        protocol=p.name if p else None, resolution=int(resolution), window=int(window), stride=int(stride),
        background_class=bg_class, background_prompts=prompts, prompt_background=prompt_bg,
        bg_threshold=float(threshold), logit_scale=float(scale), area_threshold=float(area),
    )


def queries(vocab, inf: SegmentInference):
    """The prompted classes and what each predicts: ``(query vocabulary, owner int64 (Q,))`` where
    ``owner[q]`` is the label index query ``q`` stands for (255 = unlabeled). The label classes come first,
    in order (the background class left out unless ``prompt_background``), then the background prompts."""
    from ovlabel.vocab import Vocabulary, load_vocabulary

    keep = [i for i in range(len(vocab)) if i != inf.background_class or inf.prompt_background]
    classes = [vocab.classes[i] for i in keep]
    owner = list(keep)
    if inf.background_prompts:
        extra = load_vocabulary(inf.background_prompts)
        classes += list(extra.classes)
        target = inf.background_class if inf.background_class is not None else UNLABELED
        owner += [target] * len(extra)
    return Vocabulary(tuple(classes), source=f"{vocab.source}+background"), np.asarray(owner, np.int64)


def protocol_size(height: int, width: int, short_side: int, long_cap: int = LONG_SIDE_CAP) -> tuple[int, int]:
    """mmseg ``Resize(scale=(long_cap, short_side), keep_ratio=True)``: ``(h, w)`` after scaling by
    ``min(short_side / min(h, w), long_cap / max(h, w))`` (mmcv ``rescale_size``, rounded half up)."""
    scale = min(short_side / min(height, width), long_cap / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg ``slide_inference`` windows ``(y1, y2, x1, x2)`` over an ``height x width`` image, row-major."""
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + window, height), min(c * stride + window, width)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


def protocol_windows(image: np.ndarray, inf: SegmentInference) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """``image`` resized to the protocol's size (:func:`protocol_size`, bilinear) and its window boxes
    ``(y1, y2, x1, x2)`` (:func:`window_boxes`)."""
    from PIL import Image

    h, w = protocol_size(*image.shape[:2], inf.resolution)
    if (h, w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return image, window_boxes(h, w, inf.window, inf.stride)


def sliding_similarities(image: np.ndarray, inf: SegmentInference, similarities) -> torch.Tensor:
    """Averaged window similarities ``(Q, h, w)`` float32 at the resized size (:func:`protocol_size`).

    ``image``: RGB uint8 ``(H, W, 3)``; ``similarities(crop)``: ``(Q, rows, cols)`` patch similarities of an
    RGB uint8 crop (the encoder + module at the crop's own size)."""
    image, boxes = protocol_windows(image, inf)
    h, w = image.shape[:2]
    acc = count = None
    for y1, y2, x1, x2 in boxes:
        sim = similarities(np.ascontiguousarray(image[y1:y2, x1:x2])).float()
        up = F.interpolate(sim[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        if acc is None:
            acc = torch.zeros((sim.shape[0], h, w), device=sim.device)
            count = torch.zeros((1, h, w), device=sim.device)
        acc[:, y1:y2, x1:x2] += up
        count[:, y1:y2, x1:x2] += 1
    return acc.div_(count)


def _argmax_up(sim: torch.Tensor, rows: torch.Tensor, height: int, width: int):
    """The best of the queries ``rows`` of ``sim`` ``(Q, h, w)`` upsampled bilinearly to ``(height, width)``:
    ``(query index int64 (H, W), value float32 (H, W))``, by the exact pruned
    :func:`upsampled_argmax`. Ties keep the lower query index."""

    every = len(rows) == sim.shape[0]  # all of them (rows is ascending): no copy of a possibly image-sized sim
    lab, best = upsampled_argmax(sim if every else sim[rows], height, width)
    return rows[lab], best


def _log_partition(sim: torch.Tensor, best: torch.Tensor, scale: float, budget: int = 1 << 25) -> torch.Tensor:
    """``log sum_q exp(scale * up_q)`` per pixel, for ``sim`` upsampled bilinearly (``align_corners=False``);
    ``best`` is the per-pixel maximum (for stability). float32 ``(H, W)``."""
    height, width = best.shape
    chunk = max(1, budget // (height * width))
    total = torch.zeros_like(best)
    for c0 in range(0, sim.shape[0], chunk):
        up = F.interpolate(sim[None, c0 : c0 + chunk], size=(height, width), mode="bilinear", align_corners=False)[0]
        total += torch.exp(scale * (up - best)).sum(dim=0)
    return scale * best + torch.log(total)


def decide(sim: torch.Tensor, owner: np.ndarray, inf: SegmentInference, height: int, width: int):
    """Per-pixel labels from query similarities ``sim`` ``(Q, h, w)`` (any h, w; upsampled bilinearly to
    ``(height, width)``) and the query owners ``owner`` ``(Q,)`` (label index or 255).

    Returns ``(labels int64 (H, W), value float32 (H, W))``: the winning query's class (255 = unlabeled) and
    its similarity. See the module doc for the threshold and area rules (SCLIP ``postprocess_result``:
    the probabilities are not renormalised after the area rule)."""
    owner_t = torch.as_tensor(owner, device=sim.device)
    bg = inf.background_class if inf.background_class is not None else UNLABELED
    rows = torch.arange(sim.shape[0], device=sim.device)
    arg, best = _argmax_up(sim, rows, height, width)
    log_z = _log_partition(sim, best, inf.logit_scale) if inf.bg_threshold > 0 else None
    if inf.area_threshold > 0:
        # SCLIP: a non-background class is kept if it wins more than area_threshold of the pixels won by
        # non-background classes; the others are zeroed, so their pixels go to the next best query.
        cls = owner_t[arg]
        fg = cls[(cls != bg) & (cls != UNLABELED)]
        counts = torch.bincount(fg, minlength=int(owner_t.max()) + 1) if fg.numel() else None
        if counts is not None:
            is_fg = (owner_t != bg) & (owner_t != UNLABELED)
            dropped = is_fg & (counts[owner_t.clamp(max=len(counts) - 1)] <= inf.area_threshold * fg.numel())
            if dropped.any() and not dropped.all():
                arg, best = _argmax_up(sim, rows[~dropped], height, width)
    labels = owner_t[arg]
    if log_z is not None:
        low = (inf.logit_scale * best - log_z) < math.log(inf.bg_threshold)
        labels = torch.where(low, torch.full_like(labels, bg), labels)
    return labels, best


def upsampled_argmax(sim: torch.Tensor, height: int, width: int, budget: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel argmax of class similarities ``(C, rows, cols)`` upsampled bilinearly to ``(height,
    width)`` (``align_corners=False``, as ``F.interpolate``). Returns ``(labels int64 (H, W), best
    similarity float32 (H, W))``; ties keep the lower class index, as ``argmax`` does.

    Pruning, exact up to float rounding: a pixel's value is a convex combination of its 4 neighbouring
    patches, so class ``c`` can only win in the cell between 4 patch centres if its largest value there
    reaches the best smallest value of any class there. Only classes that can win somewhere are
    upsampled (few of a large vocabulary when one class clearly leads in each region; all of them when
    similarities are near-tied everywhere), a few at a time (at most ``budget`` floats per chunk) so
    memory stays flat. A map already at least half the output's size is upsampled whole (no pruning).
    """
    sim = sim.float()
    if 4 * sim.shape[1] * sim.shape[2] >= height * width:
        # a map at least half the output's size (the sliding-window protocol's, at image size): a cell holds
        # about one output pixel, so the bound prunes little and costs more passes over the map than
        # upsampling every class does
        return _upsampled_argmax_dense(sim, height, width, budget)
    pad = F.pad(sim[None], (1, 1, 1, 1), mode="replicate")[0]  # each 2x2 window = one cell, edges clamped
    corners = (pad[:, :-1, :-1], pad[:, :-1, 1:], pad[:, 1:, :-1], pad[:, 1:, 1:])  # (C, rows + 1, cols + 1) each
    # elementwise max/min of the 4 corners: what a 2x2 stride-1 max pool gives, exactly, at a fraction of
    # max_pool2d's CPU time on large maps (the sliding-window protocol passes similarities at image size)
    cmax = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3]))
    cmin = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3]))
    can_win = (cmax >= cmin.max(dim=0, keepdim=True).values).flatten(1).any(dim=1)
    keep = torch.nonzero(can_win)[:, 0]  # ascending, so ties still go to the lower class index
    labels, best = _upsampled_argmax_dense(sim[keep], height, width, budget)
    return keep[labels], best


def _upsampled_argmax_dense(sim: torch.Tensor, height: int, width: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = sim.shape[0]
    chunk = max(1, budget // (height * width))
    best = labels = None
    for c0 in range(0, c, chunk):
        up = F.interpolate(sim[None, c0 : c0 + chunk], size=(height, width), mode="bilinear", align_corners=False)[0]
        val, idx = up.max(dim=0)
        if best is None:
            best, labels = val, idx
        else:
            better = val > best
            best = torch.where(better, val, best)
            labels = torch.where(better, idx + c0, labels)
    return labels, best
