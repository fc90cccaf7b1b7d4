"""Fusioner's early-fusion head for Stage 2 (seed 000, "Methodology"; ``train-align --head fusioner``).

Seed 000: "We first encode the input image and category names with frozen, self-supervised visual and
language models. The computed features are then concatenated and passed to a transformer-based fusion
module, that enables the features to be iteratively updated, in condition of the other modality through
self-attention. As to obtain the segmentation mask, we further measure the cosine similarity between
each pixel and the textual features of each category, i.e., computing dot product between the
L2-normalized visual and language embeddings."

The poster gives no equations; the layers follow the authors' released code (chaofanma/Fusioner,
model/fusion.py and model/head.py):

- visual tokens: ``LayerNorm -> Linear(visual_dim, width) -> LayerNorm``; text tokens (one per class):
  ``LayerNorm -> Linear(text_dim, width)`` plus a learned text-type embedding (the code's ``cls_emb`` with
  ``n_cls = 1``: its episodes hold one class; here one shared vector is added to every class token, so any
  number of classes, in any order, works at test time);
- the joint sequence ``[visual tokens, class tokens]`` through ``layers`` pre-norm transformer blocks
  (multi-head self-attention + GELU MLP), a final LayerNorm, then separate linear maps for patches
  (``proj_patch``) and classes (``proj_classes``), initialised ``N(0, width^-1/2)``;
- logits = cosine(patch, class) / temperature (model/head.py).

Where ovlabel departs, and why (ovlabel's choice): the released code decodes the fused patches with a
4-convolution decoder to 8x the patch grid for 224 px few-shot episodes; here the cosine is taken at the
patch grid and upsampled bilinearly like FMbSeg's Stage 2 ("we interpolate the similarities"), so both
heads train on the same per-patch pseudo labels and share ``segment``'s inference. The released loss is a
per-class binary cross-entropy because each episode has one class; with the several pseudo-labelled
classes of an image the loss is the softmax cross-entropy over the classes of the run
(:func:`fusioner_loss`). Padded tokens (images of different grids in one batch) are never attended to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovlabel.device import seeded
from ovlabel.errors import OvlabelError

HEAD = "fusioner"


class _Block(nn.Module):
    """Pre-norm transformer block ``x + MHSA(LN(x))``, ``x + MLP(LN(x))`` (utils/model_utils.py ``Block``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if keys is None else keys[:, None, None, :])
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class FusionModule(nn.Module):
    """Fusioner's fusion module over ``[patch tokens, class tokens]``.

    ``forward(x (B, N, visual_dim), text (K, text_dim), valid (B, N) bool or None)`` returns
    ``(patches (B, N, width), classes (B, K, width))``, both L2-normalised; ``valid`` marks real patch
    tokens (padded ones are never attended to and their outputs are meaningless). The class tokens are
    per image: they were updated "in condition of" that image's patches.
    """

    head = HEAD

    def __init__(self, visual_dim: int, text_dim: int, width: int = 512, layers: int = 12, heads: int = 8,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise OvlabelError(f"fusion_heads={heads} does not divide fusion_width={width}")
        self.visual_dim, self.text_dim, self.width = visual_dim, text_dim, width
        self.layers, self.heads, self.mlp_ratio = layers, heads, mlp_ratio
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.text_type = nn.Parameter(torch.randn(width))  # nn.Embedding's N(0, 1) initialisation
        self.blocks = nn.ModuleList([_Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        scale = width ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(width, width))
        self.proj_classes = nn.Parameter(scale * torch.randn(width, width))

    def dims(self) -> dict:
        return {"visual_dim": self.visual_dim, "text_dim": self.text_dim, "width": self.width,
                "layers": self.layers, "heads": self.heads, "mlp_ratio": self.mlp_ratio}

    def forward(self, x: torch.Tensor, text: torch.Tensor, valid: torch.Tensor | None = None):
        b, n, _ = x.shape
        k = text.shape[0]
        v = self.visual_proj(x)
        t = (self.text_proj(text.to(v.dtype)) + self.text_type).expand(b, k, -1)
        z = torch.cat([v, t], dim=1)
        keys = None
        if valid is not None:
            keys = torch.cat([valid, torch.ones(b, k, dtype=torch.bool, device=valid.device)], dim=1)
        for blk in self.blocks:
            z = blk(z, keys)
        z = self.norm(z)
        patches = F.normalize(z[:, :n] @ self.proj_patch, dim=-1)
        classes = F.normalize(z[:, n:] @ self.proj_classes, dim=-1)
        return patches, classes

    def similarities(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each patch of one image ``x (1, N, visual_dim)`` with each of the classes
        ``text (K, text_dim)``: float32 ``(K, N)``."""
        patches, classes = self(x, text)
        return (classes[0].float() @ patches[0].float().T)


def build(dims: dict, seed: int) -> FusionModule:
    """A freshly initialised module (seeded; the global RNG is untouched)."""
    with seeded(seed):
        return FusionModule(dims["visual_dim"], dims["text_dim"], dims["width"], dims["layers"], dims["heads"],
                            dims.get("mlp_ratio", 4.0))


def fusioner_loss(patches: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax cross-entropy of the labelled patches over the classes (see the module docstring).

    ``patches``: float ``(B, N, W)`` and ``classes``: float ``(B, K, W)`` L2-normalised (module outputs);
    ``labels``: int64 ``(B, N)`` in ``[0, K)`` or -1 for ignored/padded patches. Returns a scalar tensor
    (mean over labelled patches; zero with a graph when none is labelled). Computed in float32.
    """
    logits = torch.einsum("bnw,bkw->bnk", patches.float(), classes.float()) / temperature
    sel = labels >= 0
    if not sel.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[sel], labels[sel])


def optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999) as the released code trains the fusion module (model/__init__.py,
    configs ``fusion_lr`` 1e-3, ``wd`` 0.01); biases, norms and the text-type vector get no weight decay
    (its ``utils.get_params_groups``, the DINO convention)."""
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                             betas=(0.9, 0.999), weight_decay=weight_decay)


def train_step(module, opt, feats, labels, lut, text, temperature, device, precision):
    """One AdamW step of the fusion module on a batch (``train-align --head fusioner``).

    ``feats``: per image float32 ``(rows, cols, D)``; ``labels``: per image int64 ``(rows * cols,)``
    vocabulary indices or -1; ``lut``: vocabulary index -> row of ``text`` (-1: not trained); ``text``:
    ``(K, text_dim)`` the run's class features. Returns ``(loss, parts)``, or ``(None, None)`` when the
    batch has fewer than two labelled patches; ``parts`` reports the cross-entropy as ``patch_text``.
    """
    import numpy as np

    from ovlabel.device import autocast

    n_max = max((f.shape[0] * f.shape[1] for f in feats), default=0)
    y = torch.full((len(feats), n_max), -1, dtype=torch.int64)
    for i, lab in enumerate(labels):
        y[i, : len(lab)] = torch.from_numpy(lut[np.where(lab >= 0, lab, len(lut) - 1)])
    if int((y >= 0).sum()) < 2:
        return None, None
    from ovlabel.features import pad_batch

    x, valid = pad_batch(feats, device)
    module.train()
    with autocast(device, precision):
        patches, classes = module(x, text, valid if len(feats) > 1 else None)
    loss = fusioner_loss(patches, classes, y.to(device), temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    value = float(loss.detach())
    return value, {"patch_text": value, "patch_patch": 0.0}
