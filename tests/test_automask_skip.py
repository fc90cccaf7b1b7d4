"""Stage 1.2 with fewer prompts (``skip_covered``, TinySAM's hierarchical strategy) on scenes whose masks are
known: FakeSam segments by colour, so every grid point inside a region yields exactly that region."""

from __future__ import annotations

import numpy as np
import torch

from conftest import blocks_image
from fakes import FakeSam
from ovlabel.config import AutoMaskConfig
from ovlabel.stages import automask

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def test_sparse_subgrid_splits_the_grid_into_two_disjoint_row_major_parts():
    first, rest = automask.sparse_subgrid(8, 4)
    assert first.tolist() == [2 * 8 + 2, 2 * 8 + 6, 6 * 8 + 2, 6 * 8 + 6]
    assert sorted(first.tolist() + rest.tolist()) == list(range(64)) and len(rest) == 60
    assert automask.sparse_subgrid(1, 4)[0].tolist() == [0]


def test_covered_points_look_up_the_low_resolution_cover():
    cover = torch.zeros(4, 8, dtype=torch.bool)
    cover[1, 5] = True
    pts = torch.tensor([[5 * 2.0 + 0.5, 1 * 3.0 + 1.0], [0.0, 0.0], [100.0, 100.0]])  # (x, y); sx=2, sy=3
    assert automask.covered_points(cover, pts, (4, 8, 3.0, 2.0)).tolist() == [True, False, False]
    assert not automask.covered_points(None, pts, (4, 8, 3.0, 2.0)).any()


def _scene() -> np.ndarray:
    """Three vertical bands and a small yellow square that no point of the sparse first pass hits."""
    img = blocks_image(64, 96, [RED, GREEN, BLUE])
    img[32:40, 42:50] = YELLOW  # grid points (x, y) = (45, 34), (45, 38) in it; sparse x: 15, 39, 63, 87
    return img


def test_skipping_covered_points_finds_the_same_masks_with_fewer_prompts():
    img = _scene()
    full_sam, skip_sam = FakeSam(), FakeSam()
    (emb,) = full_sam.embed([img])
    cfg = AutoMaskConfig(points_per_side=16, points_per_batch=32, min_area=0.0)
    full = automask.generate(full_sam, emb, cfg)
    skip = automask.generate(skip_sam, emb, AutoMaskConfig(**{**cfg.__dict__, "skip_covered": True}))
    as_set = lambda auto: {m.numpy().tobytes() for m in auto.masks}  # noqa: E731
    assert len(full) == 4 and as_set(skip) == as_set(full)  # the yellow square too, found in the second pass
    first, _ = automask.sparse_subgrid(16, 4)
    prompted = torch.cat([p[:, 0] for p in skip_sam.prompts])
    assert skip_sam.stats["sam_prompts"] + skip_sam.stats["sam_prompts_skipped"] == 256
    assert skip_sam.stats["sam_prompts"] < 64 and full_sam.stats["sam_prompts"] == 256
    # every prompt after the first pass lies in the yellow square, the only region the first pass missed
    later = prompted[len(first):].long()
    assert len(later) > 0 and all(tuple(img[y, x]) == YELLOW for x, y in later.tolist())


def test_skip_settings_enter_the_run_settings_only_when_on():
    assert "skip_covered" not in AutoMaskConfig().result_params()
    on = AutoMaskConfig(skip_covered=True, skip_stride=2).result_params()
    assert on["skip_covered"] is True and on["skip_stride"] == 2 and on["skip_logit_thresh"] == 8.5
