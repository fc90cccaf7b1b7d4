"""Shared test setup: offline caches in temp folders, synthetic images, and fake models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_caches(tmp_path_factory):
    """Point every cache at a temp folder and forbid hub downloads for the whole session."""
    root = tmp_path_factory.mktemp("caches")
    env = {
        "OVLABEL_CACHE": str(root / "ovlabel"),
        "TORCH_HOME": str(root / "torch"),
        "HF_HOME": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "OVLABEL_OFFLINE": "1",  # no test ever reaches for the network (ovlabel.models.offline)
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import torch

    torch.set_flush_denormal(True)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def blocks_image(h: int, w: int, colors: list[tuple[int, int, int]], vertical: bool = True) -> np.ndarray:
    """An RGB uint8 image split into equal bands of the given colours."""
    img = np.zeros((h, w, 3), np.uint8)
    n = len(colors)
    for i, c in enumerate(colors):
        if vertical:
            img[:, i * w // n : (i + 1) * w // n] = c
        else:
            img[i * h // n : (i + 1) * h // n] = c
    return img


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture
def train_killed_after_first_epoch(monkeypatch):
    """``run(*args)``: ``train-align``'s ``train(*args)``, killed (KeyboardInterrupt) right after its first
    epoch's checkpoint is written; the checkpoint writer is restored afterwards."""
    from ovlabel.training import align as train_mod

    real_save = train_mod._save

    def save_then_die(out, *args):
        real_save(out, *args)
        raise KeyboardInterrupt

    def run(*args):
        monkeypatch.setattr(train_mod, "_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(*args)
        monkeypatch.setattr(train_mod, "_save", real_save)

    return run


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A small folder of synthetic images: nested folders, odd sizes, an extreme aspect ratio."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    save(root / "a.jpg", blocks_image(120, 160, [(220, 30, 30), (30, 30, 220)]), quality=95)
    save(root / "sub" / "b.png", blocks_image(90, 70, [(30, 200, 30), (220, 220, 30), (30, 30, 220)], vertical=False))
    save(root / "sub" / "deeper" / "c.webp", (rng.random((64, 96, 3)) * 255).astype(np.uint8))
    save(root / "tiny.png", blocks_image(5, 4, [(200, 10, 10)]))
    save(root / "wide.bmp", blocks_image(8, 600, [(10, 10, 200), (200, 10, 10)]))
    return root


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory):
    """16 held-out corrupted scenes (seed 3, none of the calibration's seeds) labelled by the real pipeline
    with the colour stand-ins of tests/calibration.py: ``(run dir, image folder, ground truth, kinds)``."""
    from calibration import label_run, write_corrupted_scenes

    tmp = tmp_path_factory.mktemp("calibrated")
    gt, corruptions, kinds = write_corrupted_scenes(tmp / "images", 16, seed=3)
    label_run(tmp / "images", tmp / "run", corruptions)
    return tmp / "run", tmp / "images", gt, kinds
