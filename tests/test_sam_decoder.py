"""SAM's mask decoder split at the IoU filter, SDPA attention: same numbers as segment-anything's decoder at
its real size (256 channels, 64x64 image embedding, 8 heads, 2 two-way layers), with random weights."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch

from ovlabel.models.sam_decoder import decode_masks, decode_shared_image, decode_tokens, use_sdpa

CPU = torch.device("cpu")


def _full_decoder():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(0)
    decoder = MaskDecoder(  # segment-anything's build_sam config, shared by vit_b, vit_l and vit_h
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    ).eval()
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    return decoder, pe


@pytest.fixture(scope="module")
def full():
    decoder, pe = _full_decoder()
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        pts = torch.rand(4, 1, 2, generator=torch.Generator().manual_seed(2)) * 1024
        sparse, dense = pe(points=(pts, torch.ones(4, 1, dtype=torch.int64)), boxes=None, masks=None)
        ref, ref_iou = decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)  # every token, unfiltered
    return decoder, pe, emb, sparse, dense, ref, ref_iou


def test_decoder_on_one_shared_image_equals_segment_anythings(full):
    """decode_shared_image skips segment-anything's per-prompt copies of the image: the same numbers as
    ``MaskDecoder.predict_masks`` (which ``forward`` slices into the single- and multimask outputs)."""
    decoder, pe, emb, sparse, dense, ref, ref_iou = full
    with torch.inference_mode():
        masks, iou = decode_shared_image(decoder, emb, pe.get_dense_pe(), sparse, dense[:1])
    assert torch.equal(masks, ref) and torch.equal(iou, ref_iou)


def test_masks_of_the_survivors_only_are_the_unfiltered_masks(full):
    """Upscaling and product for the IoU survivors only: bit-identical to the unfiltered decoder's masks."""
    decoder, pe, emb, sparse, dense, ref, ref_iou = full
    with torch.inference_mode():
        tokens, src, iou = decode_tokens(decoder, emb, pe.get_dense_pe(), sparse, dense[:1])
        assert torch.equal(iou, ref_iou)
        keep = iou[:, 1:] >= iou[:, 1:].median()  # about half the multimask outputs, some prompts not at all
        keep[0] = False
        keep[1] = torch.tensor([False, True, False])
        prompts, outs = torch.nonzero(keep, as_tuple=True)
        masks = decode_masks(decoder, tokens, src, (64, 64), prompts, outs + 1)
        none = decode_masks(decoder, tokens, src, (64, 64), prompts[:0], outs[:0])
    assert torch.equal(masks, ref[:, 1:][keep])
    assert none.shape == (0, 256, 256)


def test_sdpa_attention_matches_segment_anythings_within_float_rounding(full):
    decoder, pe, emb, sparse, dense, ref, ref_iou = full
    fused = copy.deepcopy(decoder)
    assert use_sdpa(fused) == 7  # 2 layers x 3 attentions + the final token-to-image attention
    with torch.inference_mode():
        masks, iou = decode_shared_image(fused, emb, pe.get_dense_pe(), sparse, dense[:1])
    scale = float(ref.abs().max())
    assert (masks - ref).abs().max() <= 1e-5 * max(scale, 1.0)
    assert (iou - ref_iou).abs().max() <= 1e-5
    assert not torch.equal(masks, ref) or torch.equal(iou, ref_iou)  # computed, not the same module


@pytest.fixture(scope="module")
def full_decoder_sam():
    """A SamModel with the real decoder and prompt encoder and a tiny encoder that emits the real embedding
    shape (256 x 64 x 64 from a 1024 px frame)."""
    from segment_anything.modeling import ImageEncoderViT, Sam

    from ovlabel.models.sam import SamModel

    decoder, pe = _full_decoder()
    torch.manual_seed(3)
    enc = ImageEncoderViT(
        depth=1, embed_dim=16, img_size=1024, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=1, patch_size=16, qkv_bias=True, use_rel_pos=False, window_size=8, out_chans=256,
    )
    sam = Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=decoder,
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return SamModel(sam, {"spec": "sam:test"}, CPU, "fp32", sdpa=False, mask_chunk=2)


def test_sam_model_decodes_only_what_passes_with_unchanged_numbers(full_decoder_sam):
    sam = full_decoder_sam
    rng = np.random.default_rng(0)
    (emb,) = sam.embed([(rng.random((96, 128, 3)) * 255).astype(np.uint8)])
    coords = torch.tensor(rng.random((4, 1, 2)) * [128, 96], dtype=torch.float32)
    labels = torch.ones(4, 1, dtype=torch.int64)
    low, iou = sam.decode(emb, coords, labels)
    thresh = float(iou.flatten().sort().values[5])
    before = sam.stats["sam_masks_decoded"]
    keep, kept, iou2 = sam.decode_filtered(emb, coords, labels, thresh)  # chunks of 2 prompts
    assert torch.equal(iou2, iou) and torch.equal(keep, iou >= thresh)
    assert torch.equal(kept, low[keep])
    assert sam.stats["sam_masks_decoded"] - before == int(keep.sum()) < 12
    pred = sam.predict_points(emb, coords, labels)
    best = iou.argmax(1)
    assert torch.equal(pred.low_res_logits[:, 0], low[torch.arange(4), best])
    assert torch.equal(pred.scores, iou.max(1).values)
    single = sam.decode(emb, coords, labels, multimask=False)
    pred1 = sam.predict_points(emb, coords, labels, multimask=False)
    assert torch.equal(pred1.low_res_logits, single[0]) and single[1].shape == (4, 1)
