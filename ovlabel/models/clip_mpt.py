"""Mask prompt tuning (OVSeg, seed 002 §3.3): learned tokens in place of the blank patches of masked crops.

Seed 002 §3.3: a masked image is tokenised to ``T in R^{Np x E}`` with a "condensed binary mask"
``Mp in {0,1}^Np`` (whether a patch is kept or masked out); a learnable ``P in R^{Np x E}`` replaces the
masked tokens, ``T (x) Mp + P (x) (1 - Mp)``, and "following the 'deep prompts' setting in Jia et al.
(2022), we can add such prompt tokens to deeper layers of the transformer"; depth 3 by default (§4.1,
A.4), CLIP's weights frozen. Details from the authors' released code (facebookresearch/ov-seg,
open_clip_training/src/open_clip/model.py, ``VisualTransformer.forward`` and ``init_mask_embedding``):

- ``Mp`` is the pixel mask average-pooled over each patch, then rounded *up*: a patch is kept when any of
  its pixels is in the mask (:func:`patch_keep`);
- layer 0 replaces the patch embeddings (``conv1`` output) before the class token and the positional
  embeddings are added; layer ``d`` (1 <= d < depth) replaces the patch tokens after block ``d``;
- prompts are initialised ``N(0, 0.02^2)`` (``mode='mae'``); the class token goes through ``ln_post``
  and the projection as in CLIP.

open_clip's ``VisionTransformer.forward`` has no hook for this, so :func:`encode_masked` runs its
modules (``conv1``, ``ln_pre``, the residual blocks, ``ln_post``, ``proj``) itself, as
:mod:`ovlabel.models.clip` already does for its last block; gradients flow to the prompts only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovlabel.device import autocast, seeded
from ovlabel.errors import OvlabelError

MPT_FORMAT = "ovlabel-mpt"
MPT_VERSION = 1
WEIGHTS_FILE = "mpt.safetensors"
CONFIG_FILE = "config.json"


class MaskPrompts(nn.Module):
    """Deep mask prompts: ``prompts`` float32 ``(depth, grid * grid, width)``, one token per patch
    position and layer."""

    def __init__(self, depth: int, grid: int, width: int):
        super().__init__()
        self.depth, self.grid, self.width = depth, grid, width
        self.prompts = nn.Parameter(torch.empty(depth, grid * grid, width))
        nn.init.normal_(self.prompts, std=0.02)

    def dims(self) -> dict:
        return {"depth": self.depth, "grid": self.grid, "width": self.width}


def build_prompts(clip, depth: int, seed: int) -> MaskPrompts:
    """Fresh prompts for ``clip``'s image tower at its native input size (seeded; global RNG untouched)."""
    visual = clip.model.visual
    grid = clip.input_size // clip.patch_size
    with seeded(seed):
        return MaskPrompts(depth, grid, int(visual.conv1.out_channels)).to(clip.device)


def patch_keep(mask_crops: np.ndarray | torch.Tensor, patch: int) -> torch.Tensor:
    """OVSeg's condensed mask ``Mp``: bool ``(N, S/p, S/p)``, True where a patch has at least one mask
    pixel (average pool, then ceil). ``mask_crops``: bool/uint8 ``(N, S, S)`` at the crop's resolution."""
    m = torch.as_tensor(np.asarray(mask_crops)).float()[:, None]
    return F.avg_pool2d(m, patch)[:, 0] > 0


def encode_masked(clip, crops: torch.Tensor, keep: torch.Tensor, prompts: MaskPrompts | None) -> torch.Tensor:
    """Class tokens of normalised masked crops ``(B, 3, S, S)`` (S = CLIP's input size) with the mask
    prompts in place of the masked patches (``keep`` bool ``(B, S/p, S/p)``); ``prompts=None`` is plain
    CLIP. Returns L2-normalised float32 ``(B, D)``; differentiable with respect to the prompts."""
    visual = clip.model.visual
    b, _, s, _ = crops.shape
    g = s // clip.patch_size
    if prompts is not None and g != prompts.grid:
        raise ValueError(f"mask prompts were trained for a {prompts.grid}x{prompts.grid} grid, crops give {g}x{g}")
    with autocast(clip.device, clip.precision):
        x = visual.conv1(crops.to(clip.device)).flatten(2).transpose(1, 2)  # (B, N, W)
        m = keep.reshape(b, -1, 1).to(device=x.device, dtype=x.dtype)
        if prompts is not None:
            x = x * m + prompts.prompts[0].to(x.dtype) * (1 - m)
        cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
        pe = clip._positional(g)
        pe = pe.clone() if pe.is_inference() else pe  # cached under inference_mode by encode_crops
        x = torch.cat([cls, x], dim=1) + pe.to(x.dtype)
        x = visual.ln_pre(x)
        for i, blk in enumerate(visual.transformer.resblocks):
            x = blk(x)
            if prompts is not None and i + 1 < prompts.depth:
                x = torch.cat([x[:, :1], x[:, 1:] * m + prompts.prompts[i + 1].to(x.dtype) * (1 - m)], dim=1)
        out = visual.ln_post(x[:, 0]) @ visual.proj
    return F.normalize(out.float(), dim=-1)


class MaskPromptClassifier:
    """A trained prompt set bound to its CLIP: what Stage 1.2's masked-crop classifier calls instead of
    ``clip.encode_crops`` (``ClassifyConfig.mpt``)."""

    def __init__(self, clip, prompts: MaskPrompts, config: dict):
        self.clip, self.prompts, self.config = clip, prompts.eval().requires_grad_(False), config

    @torch.inference_mode()
    def encode(self, crops: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """L2-normalised class tokens ``(B, D)`` of normalised crops ``(B, 3, S, S)``."""
        self.clip.stats["clip_mpt_crops"] += len(crops)
        return encode_masked(self.clip, crops, keep, self.prompts)


def save_prompts(ckpt: Path, prompts: MaskPrompts, config: dict) -> None:
    """Write ``mpt.safetensors`` (config embedded as metadata) and its readable copy ``config.json``."""
    from safetensors.torch import save_file

    from ovlabel.io.atomic import atomic_path, write_json

    ckpt.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt / WEIGHTS_FILE) as tmp:
        save_file({"prompts": prompts.prompts.detach().cpu().contiguous()}, str(tmp),
                  metadata={"ovlabel_config": json.dumps(config, sort_keys=True)})
    write_json(ckpt / CONFIG_FILE, config)


def load_prompts(ckpt: str | Path, clip) -> MaskPromptClassifier:
    """Load ``CKPT/mpt.safetensors`` (safetensors + JSON, nothing unpickled) for ``clip``; raises
    :class:`OvlabelError` when it is not a mask-prompt checkpoint or does not fit ``clip``'s image tower."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ovlabel.models.checkpoint import first_line

    path = Path(ckpt).expanduser() / WEIGHTS_FILE
    if not path.is_file():
        raise OvlabelError(f"'{ckpt}' holds no {WEIGHTS_FILE}: train mask prompts with `ovlabel train-mpt RUN --out CKPT`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            config = json.loads((fh.metadata() or {})["ovlabel_config"])
        tensor = load_file(str(path))["prompts"]
    except Exception as exc:
        raise OvlabelError(f"'{path}' is not a readable mask-prompt checkpoint ({first_line(exc)}); expected the "
                           f"{WEIGHTS_FILE} that `ovlabel train-mpt` writes (safetensors)") from None
    if config.get("format") != MPT_FORMAT or config.get("format_version") != MPT_VERSION:
        raise OvlabelError(f"'{path}' has format {config.get('format')!r} v{config.get('format_version')!r}; "
                           f"this ovlabel reads {MPT_FORMAT} v{MPT_VERSION}")
    dims = config["prompts"]
    grid = clip.input_size // clip.patch_size
    width = int(clip.model.visual.conv1.out_channels)
    if (dims["grid"], dims["width"]) != (grid, width) or tuple(tensor.shape) != (dims["depth"], grid * grid, width):
        raise OvlabelError(f"mask prompts in '{ckpt}' ({dims}) do not fit {clip.identity['spec']} "
                           f"(grid {grid}, width {width}); they were trained for {config['clip']['spec']}")
    prompts = MaskPrompts(dims["depth"], grid, width)
    prompts.prompts.data.copy_(tensor)
    return MaskPromptClassifier(clip, prompts.to(clip.device), config)


def checkpoint_fingerprint(ckpt: str | Path) -> dict:
    """What identifies a mask-prompt checkpoint in a run's settings: the SHA-256 of its weights and its
    epoch (not its folder, so a moved checkpoint keeps a run's key)."""
    from ovlabel.cache import file_sha256

    folder = Path(ckpt).expanduser()
    if not (folder / WEIGHTS_FILE).is_file():
        raise OvlabelError(f"'{ckpt}' holds no {WEIGHTS_FILE}: train mask prompts with `ovlabel train-mpt RUN --out CKPT`")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    return {"sha256": file_sha256(folder / WEIGHTS_FILE), "epoch": config.get("epoch")}
