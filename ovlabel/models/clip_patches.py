"""CLIP's image tower as a Stage 2 vision encoder (``train-align --vision-encoder clip``).

Fusioner (seed 000, "Ability to Bridge Different Pre-trained Backbones", rows A/B) pairs its fusion
module with CLIP's image tower as well as with DINO/MoCo. Its released code (chaofanma/Fusioner,
model/image_encoder.py, ``ClipViT.forward``) reads the visual tokens as ``ln_post(x[:, 1:]) @ proj`` after
the full transformer (every block with its normal attention), and L2-normalises them
(model/full_model.py, ``encoder_forward``); this adapter does the same. (Stage 1's dense features use
MaskCLIP's value path instead, see :mod:`ovlabel.models.clip`; the trained Stage 2 module sits on top of
these tokens, so Fusioner's plain read-out is kept.)

The adapter has :class:`~ovlabel.models.dinov2.DinoV2Model`'s interface (``prepare``, ``encode``,
``patch_size``, ``embed_dim``, ``identity``, ``cache_key``, ``stats``), so Stage 2's feature cache,
training and ``segment`` use it unchanged. Images of any aspect ratio are encoded at their patch grid;
CLIP's positional embeddings are interpolated bicubically to that grid (as open_clip's
``resize_pos_embed`` does for square grids).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.device import autocast


class ClipPatchEncoder:
    """Frozen CLIP image tower -> L2-normalised patch tokens ``(B, rows, cols, D)`` in the joint space."""

    def __init__(self, clip):
        self.clip = clip
        self.device = clip.device
        self.precision = clip.precision
        self.patch_size = clip.patch_size
        self.embed_dim = clip.embed_dim
        self.identity = clip.identity
        self.stats = clip.stats
        self._pos: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def cache_key(self) -> str:
        """Identifies the weights, the read-out and the numerics, for the on-disk feature cache."""
        return f"{self.clip.cache_key}|fusioner-patch-tokens|{self.precision}"

    def prepare(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Resize an RGB uint8 ``(H, W, 3)`` image to ``grid`` patches (bicubic, antialiased) and normalise
        it with CLIP's mean/std: float32 ``(3, rows * p, cols * p)`` on the model's device."""
        return self.clip.prepare(image, (grid[0] * self.patch_size, grid[1] * self.patch_size))

    def positional(self, grid: tuple[int, int]) -> torch.Tensor:
        """CLIP's positional embeddings ``(1 + rows * cols, W)`` for a ``grid`` of patches (class token first)."""
        if grid not in self._pos:
            pe = self.clip.model.visual.positional_embedding.float()
            g0 = int(round((pe.shape[0] - 1) ** 0.5))
            if tuple(grid) != (g0, g0):
                sq = pe[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
                sq = F.interpolate(sq, size=grid, mode="bicubic", align_corners=False)
                pe = torch.cat([pe[:1], sq.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])
            self._pos[grid] = pe
        return self._pos[grid]

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch tokens of normalised images ``(B, 3, H, W)`` (H, W multiples of the patch size): float32
        ``(B, H/p, W/p, D)``, L2-normalised, row-major grid."""
        visual = self.clip.model.visual
        b, _, h, w = batch.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image sides must be multiples of {p}, got {h}x{w}")
        grid = (h // p, w // p)
        with autocast(self.device, self.precision):
            x = visual.conv1(batch.to(self.device)).flatten(2).transpose(1, 2)  # (B, N, W)
            cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
            x = torch.cat([cls, x], dim=1) + self.positional(grid).to(x.dtype)
            x = visual.ln_pre(x)
            for blk in visual.transformer.resblocks:
                x = blk(x)
            tokens = visual.ln_post(x[:, 1:]) @ visual.proj
        self.stats["clip_patch_batches"] += 1
        self.stats["clip_patch_images"] += b
        return F.normalize(tokens.float(), dim=-1).reshape(b, grid[0], grid[1], -1)
