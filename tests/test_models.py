"""Model registry, the CLIP and SAM wrappers (tiny variants), text-embedding cache, offline errors."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovlabel.errors import OvlabelError, WeightsUnavailable
from ovlabel.models.registry import parse_model, resolve_models, weights_file
from ovlabel.text import class_text_features
from ovlabel.vocab import load_templates, load_vocabulary

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_clip():
    from ovlabel.models.clip import load_clip

    return load_clip(parse_model("clip:tiny", "clip"), CPU, "fp32")


@pytest.fixture(scope="module")
def tiny_sam():
    from ovlabel.models.sam import load_sam

    return load_sam(parse_model("sam:tiny", "sam"), CPU, "fp32")


# ---- registry ------------------------------------------------------------------------------------------

def test_model_strings_parse(tmp_path):
    s = parse_model("clip:ViT-L-14/openai", "clip")
    assert (s.family, s.arch, s.kind, s.weights, s.name) == ("clip", "ViT-L-14", "pretrained", "openai", "clip:ViT-L-14/openai")
    assert parse_model("ViT-B-16", "clip").weights == "openai"  # prefix and tag optional
    assert parse_model("clip:ViT-B-16/random", "clip").kind == "random"
    assert parse_model("sam:vit_h", "sam").kind == "pretrained"
    url = "https://example.org/weights/sam_vit_b_custom.pth"
    assert parse_model(f"sam:vit_b/{url}", "sam").kind == "url"
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"x")
    s = parse_model(f"sam:vit_l/{ckpt}", "sam")
    assert s.kind == "file" and s.weights == str(ckpt.resolve())
    assert parse_model("sam:tiny", "sam").random_init


@pytest.mark.parametrize(
    "value,family,message",
    [
        ("clip:ViT-Q-99", "clip", "unknown CLIP architecture 'ViT-Q-99'"),
        ("clip:ViT-L-14/notatag", "clip", "weights 'notatag'.*neither a known tag.*openai"),
        ("sam:vit_x", "sam", "unknown SAM architecture 'vit_x'.*vit_h, vit_l, vit_b"),
        ("sam:vit_h", "clip", "is a sam model but a clip model is needed"),
        ("clip:tiny/foo", "clip", "takes no weights"),
    ],
)
def test_bad_model_strings_name_the_value(value, family, message):
    with pytest.raises(OvlabelError, match=message):
        parse_model(value, family)


def test_model_presets_and_overrides():
    specs = resolve_models("tiny", {"clip": None, "sam": None})
    assert specs["clip"].name == "clip:tiny" and specs["sam"].name == "sam:tiny"
    specs = resolve_models("default", {"clip": "clip:ViT-B-16/openai", "sam": None})
    assert specs["clip"].name == "clip:ViT-B-16/openai" and specs["sam"].name == "sam:vit_h/official"
    with pytest.raises(OvlabelError, match="unknown --models preset 'huge'"):
        resolve_models("huge", {})


def test_offline_sam_download_names_the_exact_file(monkeypatch):
    def refuse(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsUnavailable) as err:
        weights_file(parse_model("sam:vit_b", "sam"))
    msg = str(err.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    assert "hub/checkpoints/sam_vit_b_01ec64.pth" in msg
    assert "--sam sam:vit_b/PATH/TO/sam_vit_b_01ec64.pth" in msg


def test_offline_clip_download_names_the_hub_file(monkeypatch):
    import open_clip

    def refuse(cfg, **kw):
        raise FileNotFoundError("offline")

    monkeypatch.setattr(open_clip, "download_pretrained", refuse)
    with pytest.raises(WeightsUnavailable) as err:
        weights_file(parse_model("clip:ViT-B-16/openai", "clip"))
    msg = str(err.value)
    assert "timm/vit_base_patch16_clip_224.openai" in msg
    assert "clip:ViT-B-16/PATH/TO/FILE" in msg


# ---- CLIP --------------------------------------------------------------------------------------------

def test_clip_class_token_matches_open_clip_and_dense_follows_maskclip(tiny_clip):
    visual = tiny_clip.model.visual
    x = torch.randn(3, 3, 224, 224)
    cls, dense = tiny_clip.encode_crops(x)
    assert cls.shape == (3, 64) and dense.shape == (3, 14, 14, 64)
    with torch.no_grad():
        ref_cls = F.normalize(tiny_clip.model.encode_image(x), dim=-1)
        # MaskCLIP by hand: the last block with its attention replaced by the value path.
        t = visual.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([visual.class_embedding.expand(3, 1, -1), t], 1) + visual.positional_embedding
        t = visual.ln_pre(t)
        for blk in visual.transformer.resblocks[:-1]:
            t = blk(t)
        blk = visual.transformer.resblocks[-1]
        w = t.shape[-1]
        v = F.linear(blk.ln_1(t), blk.attn.in_proj_weight[2 * w :], blk.attn.in_proj_bias[2 * w :])
        y = t + blk.attn.out_proj(v)
        y = y + blk.mlp(blk.ln_2(y))
        ref_dense = F.normalize(visual.ln_post(y[:, 1:]) @ visual.proj, dim=-1).reshape(3, 14, 14, -1)
    assert torch.allclose(cls, ref_cls, atol=1e-5)
    assert torch.allclose(dense, ref_dense, atol=1e-5)
    assert torch.allclose(dense.norm(dim=-1), torch.ones(3, 14, 14))


def test_clip_crops_of_other_sizes_interpolate_positions(tiny_clip):
    cls, dense = tiny_clip.encode_crops(torch.randn(2, 3, 320, 320))
    assert dense.shape == (2, 20, 20, 64)
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny_clip.encode_crops(torch.randn(1, 3, 100, 100))


def test_clip_prepare_resizes_and_normalises(tiny_clip):
    img = np.full((10, 20, 3), 255, np.uint8)
    t = tiny_clip.prepare(img, (30, 60))
    assert t.shape == (3, 30, 60)
    assert torch.allclose(t, ((1 - tiny_clip.mean) / tiny_clip.std).expand(3, 30, 60), atol=1e-5)


def test_text_features_ensemble_synonyms_and_hit_the_disk_cache(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("OVLABEL_CACHE", str(tmp_path))
    vocab = load_vocabulary("cat,dog,")
    vild = load_templates("vild")
    before = tiny_clip.stats["clip_text_prompts"]
    feats = class_text_features(tiny_clip, vocab, vild)
    assert feats.shape == (2, 64)
    assert tiny_clip.stats["clip_text_prompts"] - before == 2 * 14
    # by hand: mean of the 14 normalised template embeddings, renormalised
    ref = F.normalize(tiny_clip.encode_text([t.format("cat") for t in vild.templates]).mean(0), dim=-1)
    assert torch.allclose(feats[0], ref, atol=1e-5)
    before = tiny_clip.stats["clip_text_prompts"]
    again = class_text_features(tiny_clip, load_vocabulary("dog,cat,"), vild)
    assert tiny_clip.stats["clip_text_prompts"] == before  # all from the cache
    assert torch.allclose(again[1], feats[0], atol=1e-6)
    assert list(tmp_path.glob("text/*/*.npz"))
    # a class with synonyms averages its synonyms' features
    f = tmp_path / "syn.txt"
    f.write_text("cat, dog\n")
    syn = class_text_features(tiny_clip, load_vocabulary(str(f)), vild)
    assert torch.allclose(syn[0], F.normalize(feats[0] + feats[1], dim=0), atol=1e-5)


# ---- SAM ---------------------------------------------------------------------------------------------

def test_sam_embedding_is_batch_invariant_and_matches_sam_predictor(tiny_sam):
    from segment_anything import SamPredictor

    rng = np.random.default_rng(0)
    a = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    b = (rng.random((80, 40, 3)) * 255).astype(np.uint8)
    ea, eb = tiny_sam.embed([a, b])
    (ea1,) = tiny_sam.embed([a])
    assert torch.allclose(ea.features, ea1.features, atol=1e-5)
    assert eb.original_size == (80, 40)
    pred = SamPredictor(tiny_sam.sam)
    pred.set_image(a)
    assert torch.allclose(pred.features, ea.features, atol=1e-5)


def test_sam_keeps_each_prompts_most_confident_mask(tiny_sam):
    from segment_anything import SamPredictor

    rng = np.random.default_rng(1)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    (emb,) = tiny_sam.embed([img])
    coords = torch.tensor(rng.random((4, 5, 2)) * 63, dtype=torch.float32)
    labels = torch.ones(4, 5, dtype=torch.int64)
    calls = tiny_sam.stats["sam_decoder_calls"]
    out = tiny_sam.predict_points(emb, coords, labels, multimask=True)
    assert tiny_sam.stats["sam_decoder_calls"] == calls + 1
    pred = SamPredictor(tiny_sam.sam)
    pred.set_image(img)
    masks, iou, low = pred.predict_torch(pred.transform.apply_coords_torch(coords, (64, 64)), labels, multimask_output=True)
    best = iou.argmax(1)
    assert torch.allclose(out.all_scores, iou, atol=1e-5)
    assert torch.allclose(out.scores, iou.max(1).values, atol=1e-5)
    assert torch.equal(tiny_sam.upscale(emb, out.low_res_logits), masks[torch.arange(4), best])


