"""Fusioner's head for Stage 2 (seed 000): the fusion module, its training and checkpoints, and the
encoders it pairs (CLIP's image tower, a BERT-style text encoder loaded through transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovlabel.config import SegmentConfig, TrainAlignConfig
from ovlabel.errors import OvlabelError
from ovlabel.labelling.segment import segment
from ovlabel.models.clip_patches import ClipPatchEncoder
from ovlabel.models.registry import load_model, parse_model
from ovlabel.models.text_encoders import TextEncoder, load_text_encoder, parse_text_encoder
from ovlabel.stages import align as ck
from ovlabel.stages.fusioner import FusionModule, build, fusioner_loss
from ovlabel.training import align as train_mod
from scenes import VOCAB, write_images, write_run

CPU = torch.device("cpu")


def small(seed=0) -> FusionModule:
    return build({"visual_dim": 16, "text_dim": 8, "width": 16, "layers": 2, "heads": 2}, seed).eval()


def test_fusion_module_shapes_and_padding_is_never_attended():
    m = small()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 16, generator=g)
    text = torch.randn(3, 8, generator=g)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False  # image 2 has 6 patches, padded to 10
    with torch.no_grad():
        p, c = m(x, text, valid)
        assert p.shape == (2, 10, 16) and c.shape == (2, 3, 16)
        assert torch.allclose(p.norm(dim=-1), torch.ones(2, 10)) and torch.allclose(c.norm(dim=-1), torch.ones(2, 3))
        x2 = x.clone()
        x2[1, 6:] = 1e3 * torch.randn(4, 16, generator=g)  # garbage in the padding
        p2, c2 = m(x2, text, valid)
        alone_p, alone_c = m(x[1:, :6], text)  # the same image unpadded, on its own
    assert torch.allclose(p2[1, :6], p[1, :6], atol=1e-6) and torch.allclose(c2[1], c[1], atol=1e-6)
    assert torch.allclose(alone_p[0], p[1, :6], atol=1e-5) and torch.allclose(alone_c[0], c[1], atol=1e-5)
    # classes are a set: permuting them permutes their tokens and leaves the patches alone
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        pp, cp = m(x, text[perm], valid)
    assert torch.allclose(pp[:, :6], p[:, :6], atol=1e-5) and torch.allclose(cp, c[:, perm], atol=1e-5)
    sim = m.similarities(x[:1], text)
    assert sim.shape == (3, 10) and torch.allclose(sim, c[0] @ p[0].T, atol=1e-5)


def test_fusioner_loss_is_cross_entropy_over_labelled_patches():
    g = torch.Generator().manual_seed(1)
    p = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    c = F.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    y = torch.tensor([[0, 2, -1, 1, -1], [-1, -1, 1, 1, 0]])
    logits = torch.einsum("bnw,bkw->bnk", p, c) / 0.07
    expected = F.cross_entropy(logits[y >= 0], y[y >= 0])
    assert torch.allclose(fusioner_loss(p, c, y, 0.07), expected)
    assert fusioner_loss(p, c, torch.full_like(y, -1), 0.07).item() == 0.0


def test_bert_style_encoder_from_a_local_config(tmp_path):
    assert parse_text_encoder("bert-base-uncased").name == "bert:bert-base-uncased"
    assert parse_text_encoder("bert:tiny").kind == "tiny"
    with pytest.raises(OvlabelError, match="does not exist"):
        parse_text_encoder("./no/such/folder")
    enc = load_text_encoder(parse_text_encoder("bert:tiny"), CPU, "fp32")
    assert isinstance(enc, TextEncoder) and enc.embed_dim == 32 and enc.identity["random_init"]
    a = enc.encode_text(["a photo of a dog."])
    b = enc.encode_text(["a photo of a dog.", "a much longer prompt about a grey striped cat"])
    assert a.shape == (1, 32) and torch.allclose(a.norm(dim=-1), torch.ones(1))
    assert torch.allclose(a[0], b[0], atol=1e-5)  # padding tokens do not enter the mean
    assert not torch.allclose(b[0], b[1])
    # a save_pretrained folder loads through AutoModel.from_pretrained and gives the same features
    enc.model.save_pretrained(tmp_path / "bert")
    enc.tokenizer.save_pretrained(tmp_path / "bert")
    spec = parse_text_encoder(str(tmp_path / "bert"))
    again = load_text_encoder(spec, CPU, "fp32")
    assert spec.kind == "file" and again.identity["sha256"] and torch.allclose(again.encode_text(["a photo of a dog."]), a, atol=1e-6)


def test_clip_image_tower_gives_fusioners_patch_tokens():
    clip = load_model(parse_model("clip:tiny", "clip"), CPU, "fp32")
    enc = ClipPatchEncoder(clip)
    image = np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    feats = enc.encode(enc.prepare(image, (3, 5))[None])
    assert feats.shape == (1, 3, 5, 64) and torch.allclose(feats.norm(dim=-1), torch.ones(1, 3, 5), atol=1e-5)
    visual = clip.model.visual  # at CLIP's own grid the tokens are open_clip's, through ln_post and proj
    x = enc.prepare(image, (14, 14))[None]
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(x)
    finally:
        visual.output_tokens = False
    assert torch.allclose(enc.encode(x).reshape(1, 196, -1), F.normalize(tokens @ visual.proj, dim=-1), atol=1e-5)
    assert enc.cache_key != clip.cache_key


def cfg(tmp, **kw) -> TrainAlignConfig:
    base = dict(models="tiny", resolution=112, device="cpu", feature_cache="none", progress=False, head="fusioner",
                fusion_width=32, fusion_layers=1, fusion_heads=2, epochs=3)
    return TrainAlignConfig(**(base | kw))


def test_train_fusioner_with_bert_and_clip_vision_then_segment(tmp_path, train_killed_after_first_epoch):
    gt = write_images(tmp_path / "imgs", 6, seed=3)
    run = write_run(tmp_path / "run", tmp_path / "imgs", gt)
    train_killed_after_first_epoch(run, tmp_path / "ck", cfg(tmp_path, text_encoder="bert:tiny", vision_encoder="clip"))
    with pytest.raises(OvlabelError, match="params.fusion_width"):
        train_mod.train(run, tmp_path / "ck", cfg(tmp_path, text_encoder="bert:tiny", vision_encoder="clip", fusion_width=16, resume=True))
    summary = train_mod.train(run, tmp_path / "ck", cfg(tmp_path, text_encoder="bert:tiny", vision_encoder="clip", resume=True))
    assert summary.resumed_from == 1 and summary.epochs_done == 3  # AdamW state restored from safetensors
    assert summary.history[-1]["loss"] < summary.history[0]["loss"]
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["head"] == "fusioner" and config["module"]["width"] == 32
    assert config["vision_encoder"]["family"] == "clip" and config["text_encoder"]["spec"] == "bert:tiny"
    prov = json.loads((tmp_path / "ck" / "train.json").read_text())
    assert prov["settings"]["models"] == {"clip": "clip:tiny", "bert": "bert:tiny"}
    assert prov["settings"]["params"]["head"] == "fusioner" and "lr" not in prov["settings"]["params"]
    module, _ = ck.load_checkpoint(tmp_path / "ck", CPU)
    assert isinstance(module, FusionModule) and not any(p.requires_grad for p in module.parameters())
    out = tmp_path / "seg"
    res = segment(tmp_path / "imgs", out, SegmentConfig(classes=VOCAB, checkpoint=str(tmp_path / "ck"), device="cpu", progress=False))
    assert res.labelled == 6
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["settings"]["models"] == {"clip": "clip:tiny", "bert": "bert:tiny"}


def test_checkpoints_without_a_head_field_are_fmbsegs(tmp_path):
    module = ck.build_module({"in_dim": 16, "out_dim": 8}, seed=0)
    config = {"format": ck.CHECKPOINT_FORMAT, "format_version": ck.CHECKPOINT_VERSION, "module": module.dims()}
    ck.save_weights(tmp_path, module, config)
    loaded, _ = ck.load_checkpoint(tmp_path, CPU)
    assert isinstance(loaded, ck.AlignmentModule)
    ck.save_weights(tmp_path, module, config | {"head": "lseg"})
    with pytest.raises(OvlabelError, match="unknown Stage 2 head 'lseg'"):
        ck.load_checkpoint(tmp_path, CPU)
    (tmp_path / ck.WEIGHTS_FILE).write_bytes(b"\x80\x04not a safetensors file")  # e.g. a pickle: never unpickled
    with pytest.raises(OvlabelError, match="not a readable ovlabel alignment checkpoint"):
        ck.load_checkpoint(tmp_path, CPU)


def test_fmbseg_checkpoint_settings_are_unchanged_by_the_new_fields():
    params = TrainAlignConfig().result_params()
    assert not any(k.startswith("fusion_") or k in ("head", "vision_encoder", "text_encoder") for k in params)
    assert TrainAlignConfig(text_encoder="clip").text_encoder is None
    with pytest.raises(OvlabelError, match="head='lseg'"):
        TrainAlignConfig(head="lseg")
    with pytest.raises(OvlabelError, match="fusion_width"):
        TrainAlignConfig(fusion_width=30, fusion_heads=8)
