"""DINOv2 through torch.hub (offline: local hubs), the model strings, and the fp16 feature cache."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from ovlabel.errors import OvlabelError, WeightsUnavailable
from ovlabel.features import FeatureCache, extract_features, patch_grid
from ovlabel.models import dinov2 as d2
from ovlabel.models.registry import load_model, parse_model, resolve_models
from ovlabel.models.weights import dinov2_checkpoint_url

CPU = torch.device("cpu")

# A DINOv2-style hub repository written by the test: the entry point has the official name and signature.
HUBCONF = '''
import torch
dependencies = ["torch"]
CALLS = []

class Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_size, self.embed_dim = 14, 16
        self.patch_embed = torch.nn.Conv2d(3, 16, 14, 14)
        self.norm = torch.nn.LayerNorm(16)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 16))

    def forward_features(self, x):
        t = self.norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        return {"x_norm_clstoken": t.mean(1), "x_norm_regtokens": t[:, :0], "x_norm_patchtokens": t}

def dinov2_vitb14(*, pretrained=True, **kwargs):
    CALLS.append(pretrained)
    return Backbone()
'''


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    hub = tmp_path / "dinov2_clone"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setenv(d2.HUB_ENV, str(hub))
    return hub


def spy_hub(monkeypatch) -> list:
    calls = []
    real = torch.hub.load

    def spy(repo, entry, *args, **kwargs):
        calls.append((repo, entry, kwargs.get("source"), kwargs.get("pretrained")))
        return real(repo, entry, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "load", spy)
    return calls


def test_model_strings():
    s = parse_model("dinov2:dinov2_vitl14", "dinov2")
    assert (s.arch, s.kind, s.weights, s.name) == ("dinov2_vitl14", "pretrained", "official", "dinov2:dinov2_vitl14/official")
    assert parse_model("dinov2_vitb14_reg/random", "dinov2").kind == "random"
    assert parse_model("dinov2:tiny", "dinov2").random_init
    with pytest.raises(OvlabelError, match="unknown DINOv2 architecture 'vitb14'.*dinov2_vits14"):
        parse_model("dinov2:vitb14", "dinov2")
    assert resolve_models("default", {"dinov2": None})["dinov2"].arch == "dinov2_vitl14"  # FMbSeg §4.1: ViT-L/14
    assert set(resolve_models("tiny", {"clip": None, "sam": None})) == {"clip", "sam"}  # only what a stage asks for
    assert dinov2_checkpoint_url("dinov2_vitb14").endswith("/dinov2_vitb14/dinov2_vitb14_pretrain.pth")
    assert dinov2_checkpoint_url("dinov2_vitl14_reg").endswith("/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth")


def test_tiny_loads_through_torch_hub_local(monkeypatch):
    calls = spy_hub(monkeypatch)
    enc = load_model(parse_model("dinov2:tiny", "dinov2"), CPU, "fp32")
    assert calls == [(str(d2.OFFLINE_HUB), "dinov2_tiny", "local", False)]
    img = (np.random.default_rng(0).random((50, 80, 3)) * 255).astype(np.uint8)
    x = enc.prepare(img, (3, 5))
    assert x.shape == (3, 42, 70) and x.dtype == torch.float32
    feats = enc.encode(x[None])
    assert feats.shape == (1, 3, 5, enc.embed_dim) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="multiples of 14"):
        enc.encode(torch.zeros(1, 3, 30, 28))
    again = load_model(parse_model("dinov2:tiny", "dinov2"), CPU, "fp32")
    assert torch.equal(again.encode(x[None]), feats)  # seeded
    assert enc.identity["random_init"] and "random-seed0" in enc.cache_key


def test_real_weights_path_uses_hub_code_and_a_weights_file(local_hub, tmp_path, monkeypatch):
    calls = spy_hub(monkeypatch)
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("hubconf_copy", local_hub / "hubconf.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    torch.manual_seed(123)
    trained = mod.Backbone()
    state = {k: v for k, v in trained.state_dict().items() if k != "mask_token"}
    ckpt = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(state, ckpt)
    enc = load_model(parse_model(f"dinov2:dinov2_vitb14/{ckpt}", "dinov2"), CPU, "fp32")
    assert calls == [(str(local_hub), "dinov2_vitb14", "local", False)]  # code from the hub, weights from the file
    assert torch.equal(enc.model.patch_embed.weight, trained.patch_embed.weight)
    assert enc.identity["sha256"] and enc.identity["file"] == str(ckpt) and not enc.identity["random_init"]
    assert enc.embed_dim == 16 and enc.encode(torch.zeros(2, 3, 28, 42)).shape == (2, 2, 3, 16)

    bad = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(OvlabelError, match="do not fit dinov2:dinov2_vitb14.*missing"):
        load_model(parse_model(f"dinov2:dinov2_vitb14/{bad}", "dinov2"), CPU, "fp32")


def test_unreachable_github_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(d2.HUB_ENV, raising=False)
    ckpt = tmp_path / "w.pth"
    torch.save({}, ckpt)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(WeightsUnavailable, match=r"(?s)facebookresearch/dinov2:main.*OVLABEL_DINOV2_HUB=/path/to/dinov2"):
        load_model(parse_model(f"dinov2:dinov2_vitb14/{ckpt}", "dinov2"), CPU, "fp32")


@pytest.mark.parametrize(
    "h,w,res,expect",
    [(480, 640, 448, (32, 43)), (640, 480, 448, (43, 32)), (448, 448, 448, (32, 32)), (10, 1000, 112, (8, 16)), (5, 4, 112, (10, 8))],
)
def test_patch_grid(h, w, res, expect):
    assert patch_grid(h, w, res, 14, max_aspect=2.0) == expect


def test_feature_cache_roundtrip_and_keys(tmp_path):
    cache = FeatureCache(tmp_path, "dinov2:tiny|random|fp32")
    sha = "ab" * 32
    assert cache.load(sha, (2, 3)) is None
    feats = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    cache.save(sha, (2, 3), feats)
    back = cache.load(sha, (2, 3))
    assert back.dtype == np.float16 and np.array_equal(back, feats.astype(np.float16))
    assert cache.load(sha, (3, 2)) is None  # another grid (resolution)
    assert FeatureCache(tmp_path, "dinov2:dinov2_vitb14|abc|fp32").load(sha, (2, 3)) is None  # another encoder
    cache.path(sha, (2, 3)).write_bytes(b"not an npy file")
    assert cache.load(sha, (2, 3)) is None  # corrupt: recomputed
    assert FeatureCache(None, "x").load(sha, (2, 3)) is None  # disabled
    assert not list(tmp_path.rglob("*.tmp"))


def test_extract_features_batches_by_grid(monkeypatch):
    enc = load_model(parse_model("dinov2:tiny", "dinov2"), CPU, "fp32")
    rng = np.random.default_rng(1)
    imgs = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in [(40, 40), (30, 60), (40, 40)]]
    grids = [patch_grid(*im.shape[:2], 56, 14) for im in imgs]
    out = extract_features(enc, imgs, grids)
    assert enc.stats["dinov2_batches"] == 2 and enc.stats["dinov2_images"] == 3
    assert [tuple(o.shape[:2]) for o in out] == grids
    alone = enc.encode(enc.prepare(imgs[2], grids[2])[None])[0]
    assert torch.allclose(out[2], alone, atol=1e-5)
