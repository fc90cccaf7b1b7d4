"""CLIP (open_clip) wrapper: text embeddings, crop class tokens and dense patch features in one pass.

Dense patch features in the joint image-text space follow MaskCLIP (Zhou et al., ECCV 2022, §3.2). FMbSeg
(seed 003 §3.1) says patch features "can be projected onto the same space" and leaves "the specific
architecture for projecting patch features" to an appendix the seed text lacks, so MaskCLIP's projection is
ovlabel's choice (docs/stage1.1.md), not a stated FMbSeg one: in the last
transformer block, the query-key attention is replaced by the identity, so each patch token keeps its
own value embedding ``out_proj(W_v · ln_1(x))`` instead of a global mixture; the block's residual and
MLP are kept, then ``ln_post`` and the visual projection map every token into the space the class token
lives in. Why: CLIP's last attention layer pools globally (its output must serve the class token), which
destroys locality, whereas the value path carries each patch's own content through the weights that
were trained to map into the joint space. Both outputs come from one forward: blocks ``0..L-2`` run once,
and the last block computes ``q, k, v`` once, attends only for the class token, and runs the MLP once
over the class token and the value-path patch tokens together.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.device import autocast, seeded
from ovlabel.errors import OvlabelError

#: Bump when the tiny configuration changes, so cached tiny text embeddings are not reused.
TINY_VERSION = 1


class ClipModel:
    """A frozen open_clip model on one device.

    Attributes: ``input_size`` (native square input, px), ``patch_size`` (px), ``embed_dim`` (joint
    space width D), ``logit_scale`` (CLIP's learned softmax temperature, ``exp(logit_scale)``; 100 for
    OpenAI's weights), ``fill_color`` (RGB uint8 of CLIP's mean pixel: zero after normalisation),
    ``stats`` (counters of forward passes), ``identity`` (provenance dict).
    """

    def __init__(self, model, tokenizer, mean, std, identity: dict, device, precision: str):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        visual = model.visual
        _check_supported(visual, identity["spec"])
        self.patch_size = int(visual.patch_size[0])
        self.input_size = int(visual.image_size[0])
        self.embed_dim = int(visual.proj.shape[1])
        self.logit_scale = float(model.logit_scale.detach().exp().clamp(max=100).item())
        self.fill_color = tuple(int(round(255 * m)) for m in mean)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
        self.stats: Counter = Counter()
        self._pos_cache: dict[int, torch.Tensor] = {}

    @property
    def cache_key(self) -> str:
        """Identifies the weights, for the text-embedding cache."""
        ident = self.identity
        if ident["random_init"]:
            return f"{ident['spec']}|random-seed0|v{TINY_VERSION}"
        return f"{ident['arch']}|{ident['sha256']}"

    def prepare(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Resize an RGB uint8 ``(H, W, 3)`` image to ``size`` = (h, w) (bicubic, antialiased) and
        normalise it with CLIP's mean/std. Returns float32 ``(3, h, w)`` on the model's device."""
        t = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(t.shape[-2:]) != tuple(size):
            t = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return ((t[0] - self.mean) / self.std).contiguous()

    @torch.inference_mode()
    def encode_crops(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode normalised crops ``(B, 3, S, S)`` (S a multiple of ``patch_size``; positional
        embeddings are interpolated when S differs from ``input_size``).

        Returns ``(cls, dense)``: L2-normalised float32 class tokens ``(B, D)`` and dense patch features
        ``(B, S/p, S/p, D)`` (row-major patch grid), both in the joint embedding space.
        """
        visual = self.model.visual
        b, _, s, s2 = crops.shape
        if s != s2 or s % self.patch_size:
            raise ValueError(f"crops must be square with a side divisible by {self.patch_size}, got {s}x{s2}")
        g = s // self.patch_size
        with autocast(self.device, self.precision):
            x = visual.conv1(crops.to(self.device))  # (B, W, g, g)
            x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
            cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
            x = torch.cat([cls, x], dim=1) + self._positional(g).to(x.dtype)
            x = visual.ln_pre(visual.patch_dropout(x))
            blocks = visual.transformer.resblocks
            for blk in blocks[:-1]:
                x = blk(x)
            tokens = _last_block_cls_and_values(blocks[-1], x)
            tokens = visual.ln_post(tokens) @ visual.proj
        tokens = F.normalize(tokens.float(), dim=-1)
        self.stats["clip_image_batches"] += 1
        self.stats["clip_crops"] += b
        return tokens[:, 0], tokens[:, 1:].reshape(b, g, g, -1)

    def _positional(self, g: int) -> torch.Tensor:
        if g not in self._pos_cache:
            pe = self.model.visual.positional_embedding.float()
            g0 = int(round((pe.shape[0] - 1) ** 0.5))
            if g != g0:
                grid = pe[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
                grid = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
                pe = torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(g * g, -1)])
            self._pos_cache[g] = pe
        return self._pos_cache[g]

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 text embeddings ``(len(texts), D)`` (one per full prompt string)."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            with autocast(self.device, self.precision):
                out.append(self.model.encode_text(tokens).float())
        self.stats["clip_text_prompts"] += len(texts)
        return F.normalize(torch.cat(out), dim=-1)


def _check_supported(visual, spec: str) -> None:
    from open_clip.transformer import VisionTransformer

    ok = (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.final_ln_after_pool
        and visual.proj is not None
        and all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in visual.transformer.resblocks)
        and not hasattr(visual.transformer.resblocks[-1], "ln_1_kv")
        and visual.transformer.batch_first
    )
    if not ok:
        raise OvlabelError(
            f"{spec}: dense CLIP features need an open_clip VisionTransformer with a class token and standard "
            f"attention blocks (e.g. ViT-B-16, ViT-L-14, ViT-H-14); this architecture is not supported"
        )


def _last_block_cls_and_values(blk, x: torch.Tensor) -> torch.Tensor:
    """Run the last ``ResidualAttentionBlock`` in the MaskCLIP way; returns ``(B, 1+N, W)`` tokens:
    position 0 is the normal class-token output, positions 1.. the value-path patch tokens."""
    attn = blk.attn
    b, n, w = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q_cls = q[:, :1].reshape(b, 1, heads, -1).transpose(1, 2)
    k = k.reshape(b, n, heads, -1).transpose(1, 2)
    vh = v.reshape(b, n, heads, -1).transpose(1, 2)
    cls_attn = F.scaled_dot_product_attention(q_cls, k, vh).transpose(1, 2).reshape(b, 1, w)
    mixed = torch.cat([cls_attn, v[:, 1:]], dim=1)  # class token: real attention; patches: identity
    y = x + blk.ls_1(attn.out_proj(mixed))
    return y + blk.ls_2(blk.mlp(blk.ln_2(y)))


def build_tiny_clip():
    """A tiny random CLIP (ViT 224 px / patch 16, width 64, 2 layers; D = 64), seeded, same code path."""
    import open_clip

    with seeded():
        model = open_clip.CLIP(
            embed_dim=64,
            vision_cfg=dict(image_size=224, patch_size=16, width=64, layers=2, head_width=32, mlp_ratio=2.0),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        )
    return model


def load_clip(spec, device, precision: str) -> ClipModel:
    """Build a :class:`ClipModel` for a parsed ``clip:`` spec (see :mod:`ovlabel.models.registry`)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from ovlabel.models.checkpoint import check_file, load_error
    from ovlabel.models.weights import identity, weights_file

    if spec.kind == "tiny":
        model = build_tiny_clip()
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
        return ClipModel(
            model, tokenizer, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, identity(spec, None), device, precision
        )
    path = weights_file(spec)
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights) if spec.kind == "pretrained" else {}
    expected = f"open_clip {spec.arch} weights (a state dict or safetensors)"
    if path:
        check_file(path, "CLIP weights", expected)  # a foreign or code-bearing file fails before the model is built
    try:
        with seeded():
            model = open_clip.create_model(
                spec.arch,
                pretrained=str(path) if path else None,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                device="cpu",
            )
    except Exception as exc:
        if not path:
            raise
        raise load_error(path, exc, "CLIP weights", expected) from None
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tag_cfg.get("mean") or pcfg.get("mean") or OPENAI_DATASET_MEAN
    std = tag_cfg.get("std") or pcfg.get("std") or OPENAI_DATASET_STD
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return ClipModel(model, tokenizer, mean, std, identity(spec, path), device, precision)
