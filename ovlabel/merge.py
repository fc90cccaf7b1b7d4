"""Merging Stage 1.1 and Stage 1.2 masks into an image's final annotations.

FMbSeg (seed 003 §4.1): "Since Stage 1.2 generates many more masks per image compared to Stage 1.1, in
order to balance the pseudo annotations of these complementary methods, we randomly sample [a fraction]
of annotations from stage 1.2". The fraction did not survive in the text, so it is a parameter
(``MergeConfig.stage12_ratio``, default 0.2, ovlabel's choice). This is ovlabel's only Stage 1.2 sampling:
``train-align`` trains on the run's merged masks as they are. The sample is drawn without replacement from a
generator seeded by ``MergeConfig.seed`` and the image's content hash, so it depends on nothing else
(not on the order, the batch, or which other images are in the run) and a rerun gives the same masks.
Kept masks keep their order; Stage 1.1 masks come first.
"""

from __future__ import annotations

import math

import numpy as np

from ovlabel.config import MergeConfig
from ovlabel.masks import MaskSet

STAGE_ORDER = ("1.1", "1.2")


def sample_count(n: int, ratio: float) -> int:
    """How many of ``n`` Stage 1.2 masks are kept: ``ratio * n`` rounded half up."""
    return min(n, int(math.floor(ratio * n + 0.5)))


def sample_stage12(n: int, sha256: str, cfg: MergeConfig) -> np.ndarray:
    """Sorted indices of the Stage 1.2 masks kept for the image with content hash ``sha256``."""
    k = sample_count(n, cfg.stage12_ratio)
    if k == n:
        return np.arange(n)
    rng = np.random.default_rng([cfg.seed, int(sha256, 16)])
    return np.sort(rng.choice(n, size=k, replace=False))


def merge_stages(parts: dict[str, MaskSet], sha256: str, cfg: MergeConfig) -> MaskSet:
    """One image's final masks from its per-stage masks (``{"1.1": ..., "1.2": ...}``, either optional;
    other stages, such as ``segment``'s, pass through unchanged after them)."""
    sets = []
    order = [s for s in STAGE_ORDER if s in parts] + sorted(s for s in parts if s not in STAGE_ORDER)
    for stage in order:
        ms = parts[stage]
        if stage == "1.2":
            ms = ms.filter(sample_stage12(len(ms), sha256, cfg))
        sets.append(ms)
    return MaskSet.concat(sets)


def merged_count(counts: dict[str, int], cfg: MergeConfig) -> int:
    """Number of masks :func:`merge_stages` returns, from the per-stage counts alone."""
    return sum(sample_count(n, cfg.stage12_ratio) if s == "1.2" else n for s, n in counts.items())
