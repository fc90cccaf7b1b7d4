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

from ovlabel.device import autocast


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


@dataclass
class PointPrediction:
    """Best mask per prompt: ``low_res_logits`` float32 ``(P, 1, 4h, 4w)``, ``scores`` ``(P,)`` (SAM's
    predicted IoU of the chosen mask), ``all_scores`` ``(P, K)`` for the K candidate masks."""

    low_res_logits: torch.Tensor
    scores: torch.Tensor
    all_scores: torch.Tensor


class SamModel:
    """A frozen segment-anything ``Sam`` on one device. ``stats`` counts encoder and decoder passes."""

    def __init__(self, sam, identity: dict, device, precision: str):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam.eval().requires_grad_(False).to(device)
        self.identity = identity
        self.device = device
        self.precision = precision
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.stats: Counter = Counter()

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
            feats = self.sam.image_encoder(torch.cat(batch)).float()
        self.stats["sam_image_encoder_passes"] += len(images)
        self.stats["sam_encoder_batches"] += 1
        return [
            SamEmbedding(feats[i : i + 1], sizes[i], tuple(img.shape[:2])) for i, img in enumerate(images)
        ]

    @property
    def mask_threshold(self) -> float:
        return float(self.sam.mask_threshold)

    @torch.inference_mode()
    def decode(
        self, emb: SamEmbedding, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call for P prompts of N points each.

        ``coords``: float ``(P, N, 2)`` as (x, y) in original-image pixels; ``labels``: ``(P, N)`` with
        1 = foreground, 0 = background. Returns low-resolution mask logits float32 ``(P, K, 4h, 4w)``
        (the padded encoder frame, see :meth:`low_res_geometry`) and predicted IoUs ``(P, K)``; K = 3
        with ``multimask``, else 1.
        """
        coords = self.transform.apply_coords_torch(coords.to(self.device, torch.float32), emb.original_size)
        labels = labels.to(self.device, torch.int64)
        pe = self.sam.prompt_encoder
        with autocast(self.device, self.precision):
            sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
            low_res, iou = decode_shared_image(self.sam.mask_decoder, emb.features, pe.get_dense_pe(), sparse, dense[:1])
        if not multimask:  # as MaskDecoder.forward: token 0 is the single-mask output, 1-3 the multimask ones
            low_res, iou = low_res[:, :1], iou[:, :1]
        else:
            low_res, iou = low_res[:, 1:], iou[:, 1:]
        self.stats["sam_decoder_calls"] += 1
        self.stats["sam_prompts"] += len(coords)
        return low_res.float(), iou.float()

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
    def predict_points(
        self, emb: SamEmbedding, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ) -> PointPrediction:
        """Decode P prompts (see :meth:`decode`) in one call and keep each prompt's best mask: with
        ``multimask`` SAM proposes 3 masks per prompt and the one with the highest predicted IoU is kept
        ("select the mask with the highest confidence", seed 003 §3.2)."""
        low_res, iou = self.decode(emb, coords, labels, multimask)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        return PointPrediction(low_res[rows, best][:, None], iou[rows, best], iou)

    @torch.inference_mode()
    def upscale(self, emb: SamEmbedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Binary masks at the original resolution: bool ``(P, H, W)`` from logits ``(P, 1, h, w)``."""
        masks = self.sam.postprocess_masks(low_res_logits, emb.input_size, emb.original_size)
        return masks[:, 0] > self.sam.mask_threshold


def decode_shared_image(decoder, image_embeddings, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder.predict_masks`` for B prompts on ONE image, without copying the
    image B times. Returns all mask tokens' low-res logits ``(B, 1 + M, 4h, 4w)`` and IoUs ``(B, 1 + M)``.

    ``image_embeddings``, ``image_pe`` and ``dense`` are ``(1, C, h, w)``: ``dense`` is the prompt
    encoder's no-mask embedding, the same for every point prompt. segment-anything repeats the image
    embedding, its positional encoding and the dense embedding per prompt (three ``(B, C, h, w)`` copies),
    then projects every copy. Its ``TwoWayTransformer`` and ``Attention`` modules broadcast over a batch
    of one image and B prompts as they are, so here they get the single image: the first layer's image-side
    projections run once instead of B times, and the copies are never made. The result is the same
    computation (checked against ``MaskDecoder.forward`` in the tests); only the memory traffic is gone,
    which on a CPU is most of the decoder's time.
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = image_embeddings + dense
    _, c, h, w = src.shape
    hs, src = decoder.transformer(src, image_pe, tokens)  # src: (B, h*w, C) after the first layer
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    src = src.transpose(1, 2).reshape(-1, c, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c2, h2, w2 = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)
    return masks, decoder.iou_prediction_head(iou_token_out)


def build_tiny_sam():
    """A tiny random SAM (encoder 256 px, width 32, 2 blocks; prompt dim 32), seeded, same code path."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, img = 32, 256
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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


def load_sam(spec, device, precision: str) -> SamModel:
    """Build a :class:`SamModel` for a parsed ``sam:`` spec. Checkpoints load with ``weights_only=True``."""
    from segment_anything import sam_model_registry

    from ovlabel.errors import OvlabelError
    from ovlabel.models.weights import identity, weights_file

    if spec.kind == "tiny":
        return SamModel(build_tiny_sam(), identity(spec, None), device, precision)
    path = weights_file(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = sam_model_registry[spec.arch](checkpoint=None)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except Exception as exc:
            raise OvlabelError(
                f"cannot load SAM checkpoint '{path}' into {spec.name}: {type(exc).__name__}: {exc}. "
                f"Is it a segment-anything {spec.arch} state dict?"
            ) from None
    return SamModel(sam, identity(spec, path), device, precision)
