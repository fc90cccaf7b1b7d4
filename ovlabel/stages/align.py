"""FMbSeg's alignment module (seed 003 §3.3) and its checkpoint format.

The module is "one transformer block with multi-head self-attention" over the frozen encoder's patch
tokens (so each patch attends to the other patches of its image; no cross-attention with text, so any
class names work at test time), followed by a linear projection into the CLIP text-embedding space.
The block is a standard pre-norm ViT block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP
of ``mlp_ratio`` times the width. Outputs are L2-normalised, so a dot product with a (normalised) text
feature is a cosine similarity.

Checkpoint folder (written by ``train-align``, read by ``segment``)::

    CKPT/align.safetensors        the module's weights; its metadata holds the config below as JSON
    CKPT/config.json              the same config, readable: ``head`` (``fmbseg``, this module, or
                                  ``fusioner``, :mod:`ovlabel.stages.fusioner`; a checkpoint without the
                                  field is FMbSeg's), module dimensions, the vision and text
                                  encoders (model strings and weight identities), templates, resolution,
                                  temperature, epoch. No vocabulary: any classes work at test time.
    CKPT/train_state.safetensors  weights + optimizer + scheduler state for ``--resume``
    CKPT/train.json               provenance: version, run directory and its settings key, parameters,
                                  per-epoch losses

The weights file carries its own config, so the pair can never disagree (each file is replaced
atomically). Nothing is unpickled: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ovlabel.device import seeded
from ovlabel.errors import OvlabelError
from ovlabel.io.atomic import atomic_path, write_json

CHECKPOINT_FORMAT = "ovlabel-align"
#: Stage 2 heads: FMbSeg's alignment module (this module) and Fusioner's fusion module.
HEADS = ("fmbseg", "fusioner")
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "align.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
PROVENANCE_FILE = "train.json"


def default_heads(dim: int) -> int:
    """Attention heads for width ``dim``: 64-wide heads as in ViT/DINOv2 when they divide it, else 1."""
    return dim // 64 if dim % 64 == 0 and dim >= 64 else 1


class AlignmentModule(nn.Module):
    """One pre-norm transformer block over patch tokens + a projection to the text space.

    ``forward(x (B, N, in_dim), valid (B, N) bool or None) -> (B, N, out_dim)`` L2-normalised. ``valid``
    marks real tokens when images of different grids are padded into one batch: padded tokens are never
    attended to (their outputs are meaningless and must be ignored by the caller).
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.num_heads = num_heads or default_heads(in_dim)
        if in_dim % self.num_heads:
            raise OvlabelError(f"num_heads={self.num_heads} does not divide the feature width {in_dim}")
        self.mlp_ratio = mlp_ratio
        hidden = int(in_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(in_dim)
        self.qkv = nn.Linear(in_dim, 3 * in_dim)
        self.attn_out = nn.Linear(in_dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        self.proj = nn.Linear(in_dim, out_dim)

    def dims(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, N): keys that may be attended
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_out(y.transpose(1, 2).reshape(b, n, d))
        x = x + self.mlp(self.norm2(x))
        return F.normalize(self.proj(x), dim=-1)


def build_module(dims: dict, seed: int) -> AlignmentModule:
    """A freshly initialised module (PyTorch's default initialisation, seeded; the global RNG is untouched)."""
    with seeded(seed):
        return AlignmentModule(dims["in_dim"], dims["out_dim"], dims.get("num_heads"), dims.get("mlp_ratio", 4.0))


def head_similarities(module: nn.Module, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch of one image with every class, for either head: ``feats`` float
    ``(1, N, D)`` frozen patch features, ``text`` float32 ``(C, T)`` L2-normalised class features.
    Returns float32 ``(C, N)``. FMbSeg's module maps patches into the text space; Fusioner's fuses
    patches and classes first (:meth:`ovlabel.stages.fusioner.FusionModule.similarities`)."""
    if getattr(module, "head", "fmbseg") == "fusioner":
        return module.similarities(feats, text).float()
    z = F.normalize(module(feats)[0].float(), dim=-1)
    return text.float() @ z.T


def build_head(config: dict, seed: int) -> nn.Module:
    """A freshly initialised module of the checkpoint config's ``head`` (absent = ``fmbseg``) with its
    ``module`` dimensions."""
    head = config.get("head", "fmbseg")
    if head == "fusioner":
        from ovlabel.stages.fusioner import build

        return build(config["module"], seed)
    if head != "fmbseg":
        raise OvlabelError(f"unknown Stage 2 head {head!r}: this ovlabel knows {', '.join(HEADS)}")
    return build_module(config["module"], seed)


def save_weights(ckpt: Path, module: nn.Module, config: dict) -> None:
    """Write ``align.safetensors`` (config embedded as metadata) and its readable copy ``config.json``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(ckpt / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"ovlabel_config": json.dumps(config, sort_keys=True)})
    write_json(ckpt / CONFIG_FILE, config)


def missing_checkpoint_message(ckpt) -> str:
    where = f"'{ckpt}' holds no {WEIGHTS_FILE}" if ckpt else "no --checkpoint given"
    return (
        f"segment needs a trained alignment checkpoint ({where}). Get one in two steps:\n"
        f"  ovlabel pseudo-label IMAGES --vocab coco-stuff --out RUN     # pseudo labels (Stage 1)\n"
        f"  ovlabel train-align --run RUN --out CKPT                     # train the module (Stage 2)\n"
        f"then: ovlabel segment NEW_IMAGES --classes \"rocket,bridge\" --checkpoint CKPT"
    )


def load_checkpoint(ckpt: str | Path | None, device) -> tuple[nn.Module, dict]:
    """Load ``CKPT/align.safetensors``: the module of its ``head`` (eval mode, frozen, on ``device``) and
    its config. Only tensors and JSON are read (safetensors), nothing is unpickled.

    Raises :class:`OvlabelError` with the steps to train one when there is no checkpoint.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ovlabel.models.checkpoint import first_line, load_into

    if ckpt is None:
        raise OvlabelError(missing_checkpoint_message(None))
    path = Path(ckpt).expanduser() / WEIGHTS_FILE
    if not path.is_file():
        raise OvlabelError(missing_checkpoint_message(Path(ckpt).expanduser()))
    try:
        with safe_open(str(path), framework="pt") as fh:
            config = json.loads((fh.metadata() or {})["ovlabel_config"])
        state = load_file(str(path))
    except Exception as exc:
        raise OvlabelError(f"'{path}' is not a readable ovlabel alignment checkpoint ({first_line(exc)}); expected the "
                           f"{WEIGHTS_FILE} that `ovlabel train-align` writes (safetensors)") from None
    if config.get("format") != CHECKPOINT_FORMAT or config.get("format_version") != CHECKPOINT_VERSION:
        raise OvlabelError(
            f"'{path}' has format {config.get('format')!r} v{config.get('format_version')!r}; this ovlabel reads "
            f"{CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION}"
        )
    module = build_head(config, seed=0)
    load_into(module, state, path, "alignment checkpoint", f"the tensors of its {config.get('head', 'fmbseg')} head")
    return module.eval().requires_grad_(False).to(device), config
