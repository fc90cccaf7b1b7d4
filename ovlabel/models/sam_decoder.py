"""SAM's mask decoder split where the automatic-mask filters cut it: tokens first, mask pixels only for survivors.

segment-anything's ``MaskDecoder.predict_masks`` (and SAM 2's, ``sam2/modeling/sam/mask_decoder.py``, which
has the same structure plus an object-score token and high-resolution skip features) runs, for every prompt:

1. the two-way transformer over the prompt's tokens and the image (``hs``: tokens, ``src``: image);
2. the IoU head on the IoU token -> predicted IoU of each of the K mask tokens;
3. the output upscaling of ``src`` (two transposed convolutions, 64² -> 256²) and one hypernetwork MLP per
   mask token, whose product gives the K low-resolution masks.

Step 3 costs about a quarter of the decoder's FLOPs and needs ``src`` per prompt, yet the automatic mask
generator (segment-anything's ``amg.py``, our :mod:`ovlabel.stages.automask`) throws away every mask whose
predicted IoU (step 2) is below its threshold, and Stage 1.1 keeps one mask of K per prompt. Here
:func:`decode_tokens` runs steps 1-2 and :func:`decode_masks` runs step 3 only for the (prompt, token) pairs
asked for. Each surviving prompt's upscaling and each pair's product are the same operations on the same
numbers as in the unfiltered decoder (checked at full decoder size in tests/test_sam_decoder.py).

Both functions take the image ONCE for B prompts (segment-anything copies the image embedding, its
positional encoding and the dense prompt embedding B times; its ``TwoWayTransformer`` and ``Attention``
broadcast over a batch of one image and B prompts as they are, so the first layer's image-side projections
run once instead of B times).

:func:`use_sdpa` swaps segment-anything's explicit attention (``q @ k^T / sqrt(d)``, softmax, ``@ v``) for
PyTorch's ``F.scaled_dot_product_attention``, as SAM 2's own ``Attention`` does; same maths, fused kernel,
different rounding (tolerance checked in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ovlabel.device import autocast


def decode_tokens(decoder, image_embeddings, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transformer and IoU head of ``decoder`` (segment-anything's or SAM 2's ``MaskDecoder``) for B
    prompts on ONE image.

    ``image_embeddings``, ``image_pe`` and ``dense`` are ``(1, C, h, w)`` (``dense``: the prompt encoder's
    no-mask embedding, the same for every point prompt); ``sparse`` is ``(B, N, C)``. Returns the mask
    tokens after the transformer ``(B, 1 + M, C)``, the image after the transformer ``(B, h*w, C)`` and the
    predicted IoUs ``(B, 1 + M)`` (token 0: the single-mask output, 1..M the multimask ones).
    """
    s = 1 if getattr(decoder, "pred_obj_scores", False) else 0  # SAM 2: an object-score token comes first
    heads = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if s:
        heads.insert(0, decoder.obj_score_token.weight)
    tokens = torch.cat(heads, dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    hs, src = decoder.transformer(image_embeddings + dense, image_pe, tokens)
    mask_tokens = hs[:, s + 1 : s + 1 + decoder.num_mask_tokens, :]
    return mask_tokens, src, decoder.iou_prediction_head(hs[:, s, :])


def decode_masks(
    decoder, mask_tokens: torch.Tensor, src: torch.Tensor, size: tuple[int, int], prompts: torch.Tensor,
    tokens: torch.Tensor, high_res: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Low-resolution mask logits ``(M, 4h, 4w)`` of the (prompt, token) pairs ``prompts[i]``, ``tokens[i]``
    (int64 ``(M,)``; token indices as in :func:`decode_tokens`' outputs), in the order given.

    ``mask_tokens``/``src``: :func:`decode_tokens`' outputs; ``size``: (h, w) of the image embedding;
    ``high_res``: SAM 2's high-resolution features ``[(1, C/8, 4h, 4w), (1, C/4, 2h, 2w)]`` of the image (None
    for segment-anything). The upscaling and the product run once per distinct prompt.
    """
    if len(prompts) == 0:
        h, w = size
        return src.new_zeros(0, 4 * h, 4 * w)
    uniq, inverse = torch.unique(prompts, sorted=True, return_inverse=True)
    c = src.shape[-1]
    rows = src if len(uniq) == len(src) else src[uniq]  # uniq is sorted: all prompts = every row, in order
    # the same (contiguous) layout as the decoder's own transpose-reshape: a strided input would change the
    # convolution's kernel, hence the rounding
    image = rows.transpose(1, 2).reshape(len(uniq), c, *size)
    if high_res is None or not getattr(decoder, "use_high_res_features", False):
        upscaled = decoder.output_upscaling(image)
    else:  # SAM 2's MaskDecoder.predict_masks with use_high_res_features
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res
        upscaled = act2(dc2(act1(ln1(dc1(image) + feat_s1))) + feat_s0)
    u, c2, h2, w2 = upscaled.shape
    # The hypernetwork MLPs run on every prompt's tokens exactly as in the decoder (a few MFLOP; running them
    # on a subset changes the matmul kernel, hence the rounding), then each surviving prompt's product.
    hyper = torch.stack(
        [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    masks = (hyper[uniq] @ upscaled.view(u, c2, h2 * w2)).view(u, -1, h2, w2)
    return masks[inverse, tokens]


@dataclass
class PointPrediction:
    """Best mask per prompt: ``low_res_logits`` float32 ``(P, 1, 4h, 4w)``, ``scores`` ``(P,)`` (SAM's
    predicted IoU of the chosen mask), ``all_scores`` ``(P, K)`` for the K candidate masks."""

    low_res_logits: torch.Tensor
    scores: torch.Tensor
    all_scores: torch.Tensor


class PromptDecoding:
    """Point prompts through a SAM-style mask decoder on one shared image embedding, split at the IoU filter.

    Shared by :class:`~ovlabel.models.sam.SamModel` and :class:`~ovlabel.models.sam2.Sam2Model`; a
    subclass provides ``decoder`` (the ``MaskDecoder``), ``device``, ``precision``, ``stats`` (a Counter),
    ``mask_chunk``, ``_decode_tokens``/``_decode_masks`` (:func:`decode_tokens`/:func:`decode_masks`,
    possibly compiled), ``_prompts(emb, coords, labels) -> (sparse, dense (1, C, h, w), image_pe)`` and
    ``_high_res(emb)`` (SAM 2's high-resolution features, or None). ``emb.features`` is ``(1, C, h, w)``.
    """

    def _tokens(self, emb, coords: torch.Tensor, labels: torch.Tensor, multimask: bool | None):
        """Transformer + IoU head: mask tokens, image after the transformer, IoUs ``(P, K)`` of the K
        outputs asked for (``multimask`` None: all 1 + M tokens), and the offset of output 0 among the
        decoder's tokens."""
        with autocast(self.device, self.precision):
            sparse, dense, pe = self._prompts(emb, coords, labels)
            mask_tokens, src, iou = self._decode_tokens(self.decoder, emb.features, pe, sparse, dense)
        # as MaskDecoder.forward: token 0 is the single-mask output, 1-3 the multimask ones
        first = 1 if multimask is True else 0
        if multimask is not None:  # None: every token
            iou = iou[:, first:] if multimask else iou[:, :1]
        self.stats["sam_decoder_calls"] += 1
        self.stats["sam_prompts"] += len(coords)
        return mask_tokens, src, iou.float(), first

    def _masks(self, emb, mask_tokens, src, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Low-res logits float32 ``(M, 4h, 4w)`` of (prompt, decoder token) pairs, ``prompts`` sorted
        ascending; :attr:`mask_chunk` distinct prompts are upscaled at a time (bounds memory)."""
        size = tuple(emb.features.shape[-2:])
        assert bool((prompts[1:] >= prompts[:-1]).all()), "pairs must be sorted by prompt"
        uniq = torch.unique(prompts)
        out = []
        with autocast(self.device, self.precision):
            for g in range(0, len(uniq), self.mask_chunk):
                group = uniq[g : g + self.mask_chunk]
                sel = (prompts >= group[0]) & (prompts <= group[-1])
                out.append(self._decode_masks(
                    self.decoder, mask_tokens, src, size, prompts[sel], tokens[sel], self._high_res(emb)
                ).float())
        self.stats["sam_masks_decoded"] += len(prompts)
        self.stats["sam_prompts_upscaled"] += len(uniq)
        return torch.cat(out) if out else src.new_zeros(0, 4 * size[0], 4 * size[1], dtype=torch.float32)

    def _high_res(self, emb):
        return None

    @torch.inference_mode()
    def decode(
        self, emb, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call for P prompts of N points each.

        ``coords``: float ``(P, N, 2)`` as (x, y) in original-image pixels; ``labels``: ``(P, N)`` with
        1 = foreground, 0 = background. Returns low-resolution mask logits float32 ``(P, K, 4h, 4w)``
        (the padded encoder frame, see :meth:`low_res_geometry`) and predicted IoUs ``(P, K)``; K = 3
        with ``multimask``, else 1.
        """
        if not multimask and self._dynamic_single():
            return self._dynamic_single_mask(emb, coords, labels)
        mask_tokens, src, iou, first = self._tokens(emb, coords, labels, multimask)
        p, k = iou.shape
        prompts = torch.arange(p, device=iou.device).repeat_interleave(k)
        low = self._masks(emb, mask_tokens, src, prompts, torch.arange(k, device=iou.device).repeat(p) + first)
        return low.view(p, k, *low.shape[-2:]), iou

    def _dynamic_single(self) -> bool:
        """SAM 2 as ``build_sam2`` makes it: one mask per prompt means token 0 unless it is unstable."""
        return bool(getattr(self.decoder, "dynamic_multimask_via_stability", False))

    def _dynamic_single_mask(self, emb, coords, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's single-mask output (``MaskDecoder._dynamic_multimask_via_stability``, its own code): the
        single-mask token's mask, or the best multimask one where that is unstable. Needs every token's mask."""
        mask_tokens, src, iou, _ = self._tokens(emb, coords, labels, None)
        p, k = iou.shape
        prompts = torch.arange(p, device=iou.device).repeat_interleave(k)
        low = self._masks(emb, mask_tokens, src, prompts, torch.arange(k, device=iou.device).repeat(p))
        return self.decoder._dynamic_multimask_via_stability(low.view(p, k, *low.shape[-2:]), iou)

    @torch.inference_mode()
    def decode_filtered(
        self, emb, coords: torch.Tensor, labels: torch.Tensor, min_iou: float, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode`, with mask pixels computed only for the outputs whose predicted IoU is at least
        ``min_iou``: returns ``keep`` bool ``(P, K)``, the logits float32 ``(keep.sum(), 4h, 4w)`` of the kept
        outputs in row-major (prompt, output) order, and the IoUs ``(P, K)`` of all outputs. The kept logits
        equal ``decode(...)[0][keep]``."""
        if not multimask and self._dynamic_single():
            low, iou = self._dynamic_single_mask(emb, coords, labels)
            keep = iou >= min_iou
            return keep, low[keep], iou
        mask_tokens, src, iou, first = self._tokens(emb, coords, labels, multimask)
        keep = iou >= min_iou
        prompts, outputs = torch.nonzero(keep, as_tuple=True)
        return keep, self._masks(emb, mask_tokens, src, prompts, outputs + first), iou

    @torch.inference_mode()
    def predict_points(
        self, emb, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ) -> PointPrediction:
        """Decode P prompts (see :meth:`decode`) in one call and keep each prompt's best mask: with
        ``multimask`` SAM proposes 3 masks per prompt and the one with the highest predicted IoU is kept
        ("select the mask with the highest confidence", seed 003 §3.2). Only the kept masks' pixels are
        computed."""
        if not multimask and self._dynamic_single():
            low, iou = self._dynamic_single_mask(emb, coords, labels)
            return PointPrediction(low, iou[:, 0], iou)
        mask_tokens, src, iou, first = self._tokens(emb, coords, labels, multimask)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        low = self._masks(emb, mask_tokens, src, rows, best + first)
        return PointPrediction(low[:, None], iou[rows, best], iou)


def decode_shared_image(decoder, image_embeddings, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder.predict_masks`` for B prompts on ONE image (see the module
    docstring): all mask tokens' low-res logits ``(B, 1 + M, 4h, 4w)`` and IoUs ``(B, 1 + M)``. Inputs as
    :func:`decode_tokens`."""
    mask_tokens, src, iou = decode_tokens(decoder, image_embeddings, image_pe, sparse, dense)
    b, k = iou.shape
    size = tuple(image_embeddings.shape[-2:])
    prompts = torch.arange(b, device=iou.device).repeat_interleave(k)
    tokens = torch.arange(k, device=iou.device).repeat(b)
    masks = decode_masks(decoder, mask_tokens, src, size, prompts, tokens)
    return masks.view(b, k, *masks.shape[-2:]), iou


def _sdpa_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` with the attention itself done by
    ``F.scaled_dot_product_attention`` (default scale ``1/sqrt(C_per_head)``, as segment-anything's)."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    b = max(q.shape[0], k.shape[0])
    # one image against B prompts: the fused kernels need equal batch sizes (expand makes views, no copies)
    q, k, v = (t.expand(b, -1, -1, -1) if t.shape[0] != b else t for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.out_proj(self._recombine_heads(out))


def use_sdpa(decoder, on: bool = True) -> int:
    """Make every segment-anything ``Attention`` in ``decoder`` use :func:`_sdpa_forward` (``on``) or its
    own ``forward`` again (instances only; the library's class is not touched). Returns how many modules
    were switched. SAM 2's decoder already uses SDPA and is left as it is."""
    from segment_anything.modeling.transformer import Attention

    n = 0
    for module in decoder.modules():
        if type(module) is Attention:
            if on:
                module.forward = _sdpa_forward.__get__(module)
            else:
                module.__dict__.pop("forward", None)
            n += 1
    return n


def compiled(*fns):
    """``torch.compile`` each of ``fns`` (modules or functions) with dynamic shapes (the number of prompts
    varies per call). Compilation happens on the first call of each (and again for new shapes); it needs a
    C++ compiler on CPU and Triton on CUDA, and a failing backend raises there, it does not fall back."""
    return tuple(torch.compile(fn, dynamic=True) for fn in fns)
