"""Segment Anything wrapper: one image embedding per image, many batched point prompts per decoder call.

The expensive part of SAM is the image encoder (ViT at 1024 px); everything downstream (point prompts
here, automatic masks in Stage 1.2) reuses the :class:`SamEmbedding` it returns. Pre- and
post-processing are segment-anything's own (``ResizeLongestSide``, ``Sam.preprocess``,
``Sam.postprocess_masks``), so masks match ``SamPredictor`` exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ovlabel.device import autocast, seeded
from ovlabel.models.sam_decoder import PointPrediction, PromptDecoding, compiled, decode_masks, decode_tokens, use_sdpa

__all__ = ["PointPrediction", "SamEmbedding", "SamModel", "build_tiny_sam", "load_sam"]


@dataclass
class SamEmbedding:
    """SAM's image embedding of one image.

    ``features``: float32 ``(1, C, h, w)`` on the model device (C=256, h=w=64 for the real models);
    ``input_size``: (H', W') of the image after resizing its longest side to the encoder size, before
    padding; ``original_size``: (H, W) of the image as given.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class SamModel(PromptDecoding):
    """A frozen segment-anything ``Sam`` on one device. ``stats`` counts encoder and decoder passes.

    Speed knobs (none changes what is computed beyond float rounding): ``sdpa`` runs the decoder's attention
    through ``F.scaled_dot_product_attention`` (:func:`~ovlabel.models.sam_decoder.use_sdpa`); ``compile``
    wraps the image encoder and the two decoder halves in ``torch.compile``; ``mask_chunk``: prompts whose
    masks are upscaled at once (bounds memory: ~12 MB per prompt at fp32 for the 1024 px models).
    """

    def __init__(
        self, sam, identity: dict, device, precision: str, sdpa: bool = True, compile: bool = False, mask_chunk: int = 64
    ):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam.eval().requires_grad_(False).to(device)
        self.identity = identity
        self.device = device
        self.precision = precision
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.stats: Counter = Counter()
        self.mask_chunk = mask_chunk
        self.decoder = self.sam.mask_decoder
        if sdpa:
            use_sdpa(self.sam.mask_decoder)
        self._encode = self.sam.image_encoder
        self._decode_tokens, self._decode_masks = decode_tokens, decode_masks
        if compile:
            self._encode, self._decode_tokens, self._decode_masks = compiled(self._encode, decode_tokens, decode_masks)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> list[SamEmbedding]:
        """Run the image encoder once over a batch of RGB uint8 ``(H, W, 3)`` images."""
        batch, sizes = [], []
        for img in images:
            resized = torch.as_tensor(self.transform.apply_image(img), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            sizes.append(tuple(resized.shape[-2:]))
            batch.append(self.sam.preprocess(resized))
        with autocast(self.device, self.precision):
            feats = self._encode(torch.cat(batch)).float()
        self.stats["sam_image_encoder_passes"] += len(images)
        self.stats["sam_encoder_batches"] += 1
        return [
            SamEmbedding(feats[i : i + 1], sizes[i], tuple(img.shape[:2])) for i, img in enumerate(images)
        ]

    @property
    def mask_threshold(self) -> float:
        return float(self.sam.mask_threshold)

    def _prompts(self, emb: SamEmbedding, coords: torch.Tensor, labels: torch.Tensor):
        coords = self.transform.apply_coords_torch(coords.to(self.device, torch.float32), emb.original_size)
        pe = self.sam.prompt_encoder
        sparse, dense = pe(points=(coords, labels.to(self.device, torch.int64)), boxes=None, masks=None)
        return sparse, dense[:1], pe.get_dense_pe()

    def low_res_geometry(self, emb: SamEmbedding) -> tuple[int, int, float, float]:
        """Where the image lies in the low-resolution logits: ``(valid_h, valid_w, sy, sx)``; rows
        ``[0, valid_h)`` and columns ``[0, valid_w)`` cover the image (the rest is the encoder's padding),
        and low-res pixel edge ``(y, x)`` maps to original pixel edge ``(y * sy, x * sx)``."""
        frame = self.sam.image_encoder.img_size
        low = self.sam.prompt_encoder.mask_input_size[0]
        step = frame / low
        (ih, iw), (h, w) = emb.input_size, emb.original_size
        return math.ceil(ih / step), math.ceil(iw / step), step * h / ih, step * w / iw

    @torch.inference_mode()
    def upscale(self, emb: SamEmbedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Binary masks at the original resolution: bool ``(P, H, W)`` from logits ``(P, 1, h, w)``."""
        masks = self.sam.postprocess_masks(low_res_logits, emb.input_size, emb.original_size)
        return masks[:, 0] > self.sam.mask_threshold


def build_tiny_sam():
    """A tiny random SAM (encoder 256 px, width 32, 2 blocks; prompt dim 32), seeded, same code path."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, img = 32, 256
    with seeded():
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2, embed_dim=32, img_size=img, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
                window_size=4, out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(img // 16, img // 16), input_image_size=(img, img), mask_in_chans=4
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        # Random biases in the mask head push every logit below SAM's 0 threshold (empty masks); without
        # them tiny masks cover a few to tens of percent of the image, so the plumbing carries real masks.
        for name, param in sam.mask_decoder.named_parameters():
            if name.startswith(("output_upscaling", "output_hypernetworks")) and name.endswith("bias"):
                param.data.zero_()
    return sam


def load_sam(spec, device, precision: str, **options) -> SamModel:
    """Build a :class:`SamModel` for a parsed ``sam:`` spec. Checkpoints load with ``weights_only=True``.
    ``options``: :class:`SamModel`'s speed knobs (``sdpa``, ``compile``, ``mask_chunk``)."""
    from segment_anything import sam_model_registry

    from ovlabel.models.checkpoint import load_into, read_state_dict
    from ovlabel.models.weights import identity, weights_file

    if spec.kind == "tiny":
        return SamModel(build_tiny_sam(), identity(spec, None), device, precision, **options)
    path = weights_file(spec)
    expected = f"a segment-anything {spec.arch} state dict"
    state = read_state_dict(path, "SAM checkpoint", expected) if path is not None else None  # before building
    with seeded():
        sam = sam_model_registry[spec.arch](checkpoint=None)
    if state is not None:
        load_into(sam, state, path, "SAM checkpoint", expected)
    return SamModel(sam, identity(spec, path), device, precision, **options)
