"""DINOv2 (torch.hub) wrapper: frozen patch features at any resolution that is a multiple of 14.

Real models come from ``torch.hub.load("facebookresearch/dinov2:main", ARCH, pretrained=False)`` (the
model code, fetched once into ``$TORCH_HOME/hub``) plus the official checkpoint, which ovlabel downloads
itself into ``$TORCH_HOME/hub/checkpoints`` (the same file the hub entry point would fetch) so that its
SHA-256 can be recorded and an offline machine gets an error naming the file. ``OVLABEL_DINOV2_HUB``
may point at a local clone of the dinov2 repository instead (``source="local"``: no network at all).
``dinov2:tiny`` and ``dinov2:ARCH/random`` load, through the same ``torch.hub.load`` call, from
ovlabel's offline hub (:mod:`ovlabel.models.dinov2_hub`): same shapes, random weights.

Preprocessing follows DINOv2's evaluation transforms: bicubic resize, ImageNet mean/std.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.device import autocast, seeded
from ovlabel.errors import OvlabelError, WeightsUnavailable

#: The official repository (pinned to its default branch so torch.hub needs no network once cached).
DINOV2_HUB_REPO = "facebookresearch/dinov2:main"
#: Environment variable naming a local clone of facebookresearch/dinov2 to load the model code from.
HUB_ENV = "OVLABEL_DINOV2_HUB"
#: ovlabel's offline hub of random-weight DINOv2-shaped models.
OFFLINE_HUB = Path(__file__).resolve().parent / "dinov2_hub"
#: Bump when the tiny configuration changes, so cached tiny features are not reused.
TINY_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Model:
    """A frozen DINOv2 backbone on one device.

    Attributes: ``patch_size`` (14), ``embed_dim`` (D: 384 S, 768 B, 1024 L, 1536 g), ``identity``
    (provenance dict), ``stats`` (forward-pass counters).
    """

    def __init__(self, model, identity: dict, device, precision: str):
        self.model = model.eval().requires_grad_(False).to(device)
        self.identity = identity
        self.device = device
        self.precision = precision
        self.patch_size = int(getattr(model, "patch_size", 14))
        self.embed_dim = int(model.embed_dim)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
        self.stats: Counter = Counter()

    @property
    def cache_key(self) -> str:
        """Identifies the weights and the numerics, for the on-disk feature cache."""
        ident = self.identity
        weights = f"random-seed0|v{TINY_VERSION}" if ident["random_init"] else ident["sha256"]
        return f"{ident['spec']}|{weights}|{self.precision}"

    def prepare(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Resize an RGB uint8 ``(H, W, 3)`` image to ``grid`` = (rows, cols) patches, i.e. to
        ``(rows * 14, cols * 14)`` pixels (bicubic, antialiased), and normalise it with ImageNet mean/std.
        Returns float32 ``(3, rows * 14, cols * 14)`` on the model's device."""
        size = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        t = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device)
        t = t.permute(2, 0, 1)[None].float() / 255.0
        if tuple(t.shape[-2:]) != size:
            t = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return ((t[0] - self.mean) / self.std).contiguous()

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch features of normalised images ``(B, 3, H, W)`` (H, W multiples of 14): float32
        ``(B, H/14, W/14, D)``, the final-norm patch tokens (``x_norm_patchtokens``), row-major grid.
        Class and register tokens are dropped (FMbSeg §3.3 uses the patch tokens only)."""
        b, _, h, w = batch.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image sides must be multiples of {p}, got {h}x{w}")
        with autocast(self.device, self.precision):
            tokens = self.model.forward_features(batch.to(self.device))["x_norm_patchtokens"]
        self.stats["dinov2_batches"] += 1
        self.stats["dinov2_images"] += b
        return tokens.float().reshape(b, h // p, w // p, -1)


def hub_load(repo: str, entry: str, **kwargs):
    """``torch.hub.load`` of ``entry`` from a local folder (``source="local"``) or a GitHub repo; failures
    to reach GitHub become :class:`WeightsUnavailable` saying how to supply the code offline."""
    local = Path(repo).expanduser()
    if local.is_dir():
        if not (local / "hubconf.py").is_file():
            raise OvlabelError(f"'{local}' has no hubconf.py: point {HUB_ENV} at a clone of facebookresearch/dinov2")
        return torch.hub.load(str(local), entry, source="local", **kwargs)
    try:
        cached = Path(torch.hub.get_dir()) / (repo.split(":")[0].replace("/", "_") + "_main")
        if not cached.is_dir():
            from ovlabel.io.net import fail_fast

            fail_fast("github.com")  # seconds, not a minute of retries, when offline
        return torch.hub.load(repo, entry, source="github", trust_repo=True, skip_validation=True, **kwargs)
    except Exception as exc:  # URLError, HTTPError, RuntimeError("no internet connection ..."), ...
        cached = Path(torch.hub.get_dir()) / repo.split(":")[0].replace("/", "_")
        raise WeightsUnavailable(
            f"cannot load the DINOv2 model code with torch.hub from '{repo}' ({type(exc).__name__}: {exc}).\n"
            f"torch.hub keeps it in {cached}_main. Offline? Clone https://github.com/facebookresearch/dinov2 "
            f"on a connected machine, copy it here and set {HUB_ENV}=/path/to/dinov2 (or copy the torch.hub "
            f"cache folder above)."
        ) from None


def load_dinov2(spec, device, precision: str, hub: str | None = None) -> DinoV2Model:
    """Build a :class:`DinoV2Model` for a parsed ``dinov2:`` spec (see :mod:`ovlabel.models.registry`).

    ``hub`` (else ``$OVLABEL_DINOV2_HUB``, else facebookresearch/dinov2 on GitHub) is where the model
    code of real weights comes from. Weights load with ``torch.load(weights_only=True)`` (or safetensors).
    """
    from ovlabel.models.weights import identity, weights_file

    if spec.random_init:
        entry = "dinov2_tiny" if spec.kind == "tiny" else spec.arch
        model = hub_load(str(OFFLINE_HUB), entry, pretrained=False)
        return DinoV2Model(model, identity(spec, None), device, precision)
    from ovlabel.models.checkpoint import read_state_dict

    path = weights_file(spec)
    state = read_state_dict(path, "DINOv2 weights", _expected(spec))  # a bad file fails before the build
    repo = hub or os.environ.get(HUB_ENV) or DINOV2_HUB_REPO
    with seeded():
        model = hub_load(repo, spec.arch, pretrained=False)
    _load_state(model, state, path, spec)
    return DinoV2Model(model, identity(spec, path), device, precision)


def _expected(spec) -> str:
    return f"a DINOv2 {spec.arch} backbone state dict"


def _load_state(model, state: dict, path: Path, spec) -> None:
    from ovlabel.models.checkpoint import load_into

    expected = _expected(spec)
    missing, unexpected = load_into(model, state, path, "DINOv2 weights", expected, strict=False)
    missing = [k for k in missing if k != "mask_token"]  # only used by DINOv2's masked-image training
    if missing or unexpected:
        raise OvlabelError(
            f"cannot use DINOv2 weights '{path}': they do not fit dinov2:{spec.arch}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]} (expected {expected})"
        )
