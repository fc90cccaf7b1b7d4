"""PnP-OVSS (seed 004): BLIP GradCAM, Salience DropOut, token spans, the CLIP reward, tune, and `salience` runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from typer.testing import CliRunner

from conftest import save
from ovlabel.artifacts import RunLayout, read_label_png, read_soft_map, write_manifest
from ovlabel.cli import app
from ovlabel.dataset import write_masks_and_coco
from ovlabel.errors import OvlabelError, WeightsUnavailable
from ovlabel.io.atomic import write_json
from ovlabel.masks import MaskSet
from ovlabel.models.registry import parse_model
from ovlabel.salience_config import SEARCH_HEADS, SEARCH_LAYERS, SEARCH_THRESHOLDS, SalienceConfig, TuneConfig
from ovlabel.stages.salience import SalienceExtractor, class_maps, gradcam, salience_dropout
from ovlabel.stages.tune import (
    ClipReward,
    best_trial,
    random_search,
    reward_from_logits,
    reward_from_probs,
)
from ovlabel.training.tune import PARAMS_FORMAT, load_params, tune
from ovlabel.vocab import load_vocabulary

CPU = torch.device("cpu")
runner = CliRunner()
TINY = ["--models", "tiny", "--device", "cpu", "--resolution", "64", "--no-progress"]


@pytest.fixture(scope="module")
def blip():
    from ovlabel.models.blip import load_blip

    return load_blip(parse_model("blip:tiny", "blip"), CPU, "fp32")


def two_colours(h=48, w=64) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2 :] = (30, 30, 200)
    return img


# ---- model strings, offline errors -------------------------------------------------------------------------

def test_blip_model_strings_and_offline_error(tmp_path):
    from ovlabel.models.registry import weights_file

    assert parse_model("blip:itm-large-coco", "blip").name == "blip:itm-large-coco"
    assert parse_model("blip:itm-base-coco/random", "blip").random_init
    assert parse_model(f"blip:itm-large-coco/{tmp_path}", "blip").kind == "file"
    with pytest.raises(OvlabelError, match="unknown BLIP model 'itm-huge'.*itm-large-coco"):
        parse_model("blip:itm-huge", "blip")
    with pytest.raises(WeightsUnavailable, match=r"Salesforce/blip-itm-large-coco(.|\n)*hub(.|\n)*--blip blip:itm-large-coco/PATH"):
        weights_file(parse_model("blip:itm-large-coco", "blip"))
    assert weights_file(parse_model("blip:itm-large-coco", "blip"), download=False) is None


# ---- prompt and class token spans ---------------------------------------------------------------------------

def test_class_token_spans_cover_exactly_each_multi_token_name(blip):
    names = ["traffic light", "zebrafish", "wall-other", "dog"]
    p = blip.prompt(names)
    assert p.text == "A picture of traffic light zebrafish wall dog"
    tokens = blip.tokenizer.convert_ids_to_tokens(p.ids.tolist())
    assert tokens[:4] == ["[ENC]", "a", "picture", "of"] and tokens[-1] == "[SEP]"  # original BLIP's ITM token
    cls = blip.prompt(names, itm_token="cls")
    assert blip.tokenizer.convert_ids_to_tokens(cls.ids[:1].tolist()) == ["[CLS]"]
    assert cls.ids[1:].tolist() == p.ids[1:].tolist() and cls.spans == p.spans
    pieces = [tokens[a:b] for a, b in p.spans]
    assert [" ".join(t).replace(" ##", "") for t in pieces] == ["traffic light", "zebrafish", "wall", "dog"]
    assert len(pieces[0]) == 2 and len(pieces[1]) > 2  # two words; an unknown word in several word pieces
    starts = [a for a, _ in p.spans]
    assert starts[0] == 4 and all(b == a2 for (_, b), a2 in zip(p.spans, starts[1:]))  # "A picture of" excluded
    cam = torch.arange(len(tokens) * 3, dtype=torch.float32).reshape(len(tokens), 3)
    maps = class_maps(cam, p.spans)
    torch.testing.assert_close(maps[1], cam[p.spans[1][0] : p.spans[1][1]].mean(0))
    with pytest.raises(OvlabelError, match="at most 512"):
        blip.prompt(["zebrafish"] * 200)


def test_enc_token_id_of_tokenizers_that_do_not_name_it():
    from ovlabel.models.blip import BLIP_ENC_TOKEN_ID, build_tiny_tokenizer, enc_token_id

    tiny = build_tiny_tokenizer()
    assert enc_token_id(tiny, len(tiny)) == len(tiny) - 1  # named: the last piece, after [DEC]

    class Bert:  # a tokenizer that knows only BERT's pieces, as the Hugging Face BLIP checkpoints ship
        def get_vocab(self):
            return {"[CLS]": 101}

    assert enc_token_id(Bert(), 30524) == BLIP_ENC_TOKEN_ID == 30523  # bert-base-uncased + [DEC] + [ENC]
    assert enc_token_id(Bert(), 30522) is None


# ---- GradCAM ------------------------------------------------------------------------------------------------

def test_gradcam_equals_clamped_gradient_times_attention_by_hand(blip):
    """The wrapper's hook-and-autograd.grad path against HF's own forward with a full backward."""
    import copy

    img = two_colours()
    ext = SalienceExtractor(blip, SalienceConfig(resolution=64, layer=8, head=10, rounds=1))
    with torch.inference_mode():
        pixels = ext.prepare([img, img[::-1].copy()])
    prompts = [blip.prompt(["red thing", "zebrafish"]), blip.prompt(["dog"])]
    attn, grad = blip.attention_and_gradients(pixels, prompts, [7])[7]

    model = copy.deepcopy(blip.model).requires_grad_(True)
    seen = {}

    def keep(_m, _i, out):
        out[1].retain_grad()
        seen["attn"] = out[1]

    hook = model.text_encoder.encoder.layer[7].crossattention.self.register_forward_hook(keep)
    ids = torch.nn.utils.rnn.pad_sequence([p.ids for p in prompts], batch_first=True)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(p.ids) for p in prompts])[:, None]).long()
    out = model(input_ids=ids, pixel_values=pixels.clone(), attention_mask=mask, interpolate_pos_encoding=True)
    out.itm_score[:, 1].sum().backward()
    hook.remove()
    a_hand, g_hand = seen["attn"].detach()[..., 1:], seen["attn"].grad[..., 1:]
    valid = mask[:, None, :, None]
    torch.testing.assert_close(attn, a_hand * valid)
    torch.testing.assert_close(grad, g_hand * valid, rtol=1e-4, atol=1e-9)
    assert grad.abs().sum() > 0
    expected = (g_hand * a_hand).clamp(min=0)[:, 9] * valid[:, 0]
    torch.testing.assert_close(gradcam(attn, grad, 10), expected, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(gradcam(attn, grad, None), ((g_hand * a_hand).clamp(min=0) * valid).mean(1),
                               rtol=1e-4, atol=1e-12)
    maps = ext.maps(pixels, prompts)  # one round: exactly the class means of Eq. 1
    for i, p in enumerate(prompts):
        hand = torch.stack([expected[i, a:b].mean(0) for a, b in p.spans]).reshape(-1, 4, 4)
        np.testing.assert_allclose(maps[i], hand.numpy(), rtol=1e-4, atol=1e-12)


# ---- Salience DropOut ---------------------------------------------------------------------------------------

def test_salience_dropout_never_revisits_a_dropped_patch_and_sums_exactly_three_rounds():
    grid, patch, drop = 6, 4, 10
    n = grid * grid
    base = torch.linspace(2.0, 1.0, n)  # patch 0 most salient, always: only the keep mask stops a revisit
    returned, inputs = [], []

    def compute(px):
        inputs.append(px.clone())
        maps = [torch.stack([base * (1 + len(returned)), base.flip(0) * 0.1]) for _ in range(px.shape[0])]
        returned.append([m.clone() for m in maps])
        return maps

    pixels = torch.ones(2, 3, grid * patch, grid * patch)
    total, keep = salience_dropout(compute, pixels, grid, patch, rounds=3, drop=drop)
    assert len(inputs) == 3 and torch.equal(pixels, torch.ones_like(pixels))  # the caller's input is untouched
    k1 = torch.ones(n, dtype=torch.bool)
    k2 = k1.clone()
    k2[:10] = False  # highest summed salience first
    k3 = k2.clone()
    k3[10:20] = False  # the next ten: the dropped ones are never chosen again
    assert torch.equal(keep[0], k3) and torch.equal(keep[1], k3)
    for r, kept in enumerate((k1, k2, k3)):
        visible = inputs[r][0, 0].reshape(grid, patch, grid, patch).permute(0, 2, 1, 3).reshape(n, -1)
        assert torch.equal(visible.amax(1) > 0, kept)  # dropped patches are zeroed in BLIP's input, for good
    expected = sum(returned[r][0] * kept for r, kept in enumerate((k1, k2, k3)))
    torch.testing.assert_close(total[0], expected)
    assert (total[0][:, :10] == returned[0][0][:, :10]).all()  # a dropped patch only has its first-round salience


def test_default_salience_runs_four_passes_the_image_and_three_drops(blip):
    assert SalienceConfig().rounds == 4
    ext = SalienceExtractor(blip, SalienceConfig(resolution=64))
    before = blip.stats["blip_passes"]
    with torch.inference_mode():
        pixels = ext.prepare([two_colours()])
    ext.maps(pixels, [blip.prompt(["red thing", "blue thing"])])
    assert blip.stats["blip_passes"] - before == 4


def test_labels_take_the_argmax_of_the_raw_not_the_normalised_salience():
    from ovlabel.stages.salience import hard_labels, normalise

    a = np.array([[1.0, 0.6], [0.5, 0.0]], np.float32)  # strong class
    b = np.array([[0.0, 0.2], [0.3, 0.1]], np.float32)  # weak class: min-max normalisation stretches it to 1
    maps = np.stack([a, b])
    # threshold 0.15 on the normalised maps keeps a at [1, .6, .5, -] and b at [-, .667, 1, .333]
    lab = hard_labels(maps, [4, 7], 0.15, 2, 2)  # 2x2: the upsampling is the identity
    assert lab.tolist() == [[4, 4], [4, 7]]  # raw: a wins where both are kept
    assert normalise(maps).argmax(0).tolist() == [[0, 1], [1, 1]]  # the old rule: b would win two pixels
    assert hard_labels(np.stack([a * 0, b * 0]), [4, 7], 0.15, 2, 2).tolist() == [[255, 255], [255, 255]]


def test_blur_sigma_is_a_fraction_of_the_long_side():
    from ovlabel.config import CRFConfig
    from ovlabel.crf import sigma_pixels

    assert sigma_pixels(CRFConfig(blur_sigma=0.05), 300, 400) == pytest.approx(20.0)  # 4:3 image: 0.05 x 400
    assert sigma_pixels(CRFConfig(blur_sigma=0.05, blur_side="short"), 300, 400) == pytest.approx(15.0)
    assert SalienceConfig().crf.blur_side == "long"


def test_unaries_are_the_softmax_of_the_blurred_normalised_salience_and_background():
    from ovlabel.config import CRFConfig
    from ovlabel.crf import unaries_from_salience

    maps = np.array([[[0.0, 2.0, 1.0]]], np.float32)  # one class on a 1x3 image; 0 at the first pixel
    probs, labels = unaries_from_salience(maps, [5], CRFConfig(blur_sigma=0.0))
    assert labels.tolist() == [5, 255]
    # class channel min-max -> [0, 1, .5]; background (max == 0) -> [1, 0, 0]; softmax over the two channels
    e = np.e
    expected_class = [1 / (1 + e), e / (e + 1), np.exp(0.5) / (np.exp(0.5) + 1)]
    np.testing.assert_allclose(probs[0, 0], expected_class, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-6)
    probs, labels = unaries_from_salience(maps, [5], CRFConfig(blur_sigma=0.0, fill_unlabeled=True))
    assert labels.tolist() == [5] and np.allclose(probs, 1.0)
    # blurred (std 0.5 x the long side = 1.5 px): the class channel is the min-max-normalised Gaussian blur
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(maps[0], 1.5)
    norm = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    probs, _ = unaries_from_salience(maps, [5], CRFConfig(blur_sigma=0.5))
    bg = gaussian_filter(np.array([[1.0, 0.0, 0.0]], np.float32), 1.5)
    bg = (bg - bg.min()) / (bg.max() - bg.min())
    np.testing.assert_allclose(probs[0], np.exp(norm) / (np.exp(norm) + np.exp(bg)), rtol=1e-5)


# ---- the reward of §3.4 -------------------------------------------------------------------------------------

class ColourClip:
    """A fake CLIP: image embedding from the mean red, blue and darkness of the crop."""

    input_size = 16
    logit_scale = 10.0

    def prepare(self, image, size):
        return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)

    def encode_crops(self, crops):
        r, b = crops[:, 0].mean((1, 2)), crops[:, 2].mean((1, 2))
        emb = torch.stack([r, b, 1 - torch.maximum(r, b)], dim=1)
        return F.normalize(emb, dim=-1), None


def test_reward_is_one_exactly_when_the_masked_image_beats_the_black_image():
    assert reward_from_probs([0.3, 0.2, 0.2], [0.2, 0.2, 0.3]) == 1  # equal is not a win
    clip = ColourClip()
    reward = ClipReward(clip, torch.eye(3), norm="vocabulary")  # classes: red, blue, dark
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :8] = (255, 0, 0)
    img[:, 8:] = (0, 0, 255)
    left = np.zeros((16, 16), np.float32)
    left[:, :8] = 1
    probs = lambda im: (clip.logit_scale * clip.encode_crops(clip.prepare(im, 16)[None])[0] @ torch.eye(3)).softmax(-1)[0]
    black = probs(np.zeros_like(img))
    cases = [(left, 0), (left, 2), (1 - left, 1), (1 - left, 0), (np.zeros_like(left), 1), (np.ones_like(left), 2)]
    wins = []
    for mask, cls in cases:
        masked = np.rint(img * mask[..., None]).astype(np.uint8)
        expected = int(probs(masked)[cls] > black[cls])
        assert reward(img, mask[None], [cls]) == expected
        wins.append(expected)
    assert wins == [1, 0, 1, 1, 0, 0]  # both outcomes occur; an empty mask is the black image: no win
    assert reward(img, np.stack([left, np.zeros_like(left), left]), [0, 1, 2]) == 1


def test_reward_normalises_over_the_images_own_classes():
    black = np.array([0.0, 0.0, 1.0])  # logits over a 3-class vocabulary
    masked = np.array([[2.0, 0.0, 5.0],  # image masked with class 0's mask
                       [0.0, 1.0, 0.0]])  # ... with class 1's mask
    # own classes {0, 1}: P(0|m0) = e^2/(e^2+1) = .88 > P(0|black) = .5; P(1|m1) = e/(1+e) = .73 > .5
    assert reward_from_logits(masked, black, [0, 1], "image") == 2
    # whole vocabulary: P(0|m0) = e^2/(e^2+1+e^5) = .047 < P(0|black) = 1/(2+e) = .21; P(1|m1) = .58 > .21
    assert reward_from_logits(masked, black, [0, 1], "vocabulary") == 1
    assert reward_from_logits(masked[:1], black, [0], "image") == 0  # one class: 1 vs 1, never a win


# ---- tune ---------------------------------------------------------------------------------------------------

def test_random_search_returns_the_argmax_of_its_trials_reproducibly():
    space = {"layer": SEARCH_LAYERS, "head": SEARCH_HEADS, "threshold": SEARCH_THRESHOLDS}
    score = lambda p: -abs(p["layer"] - 8) - abs(p["head"] - 10) - 10 * abs(p["threshold"] - 0.15)
    full = random_search(space, 10_000, 0, score)
    assert len(full) == 720 and len({(t["layer"], t["head"], t["threshold"]) for t in full}) == 720
    assert {k: best_trial(full)[k] for k in space} == {"layer": 8, "head": 10, "threshold": 0.15}
    some = random_search(space, 30, 7, score)
    assert some == random_search(space, 30, 7, score) and some != random_search(space, 30, 8, score)
    assert best_trial(some)["reward"] == max(t["reward"] for t in some)
    assert best_trial([{"reward": 1.0, "i": 0}, {"reward": 2.0, "i": 1}, {"reward": 2.0, "i": 2}])["i"] == 1


def test_tune_end_to_end_is_reproducible_and_writes_a_params_file(blip, tmp_path):
    from ovlabel.models.clip import load_clip

    clip = load_clip(parse_model("clip:tiny", "clip"), CPU, "fp32")
    folder = tmp_path / "images"
    save(folder / "a.png", two_colours())
    save(folder / "b.png", two_colours(40, 40)[:, ::-1].copy())
    cfg = TuneConfig(vocab="red thing,blue thing", resolution=64, trials=3, sigma_trials=2, seed=3, progress=False)
    doc = tune(folder, tmp_path / "p1.json", cfg, blip=blip, clip=clip)
    again = tune(folder, tmp_path / "p2.json", cfg, blip=blip, clip=clip)
    assert doc["trials"] == again["trials"] and len(doc["trials"]) == 5
    grad_trials = [t for t in doc["trials"] if t["phase"] == "gradcam"]
    best = best_trial(grad_trials)
    assert {k: doc["params"][k] for k in ("layer", "head", "threshold")} == {k: best[k] for k in ("layer", "head", "threshold")}
    assert doc["params"]["blur_sigma"] == best_trial([t for t in doc["trials"] if t["phase"] == "blur"])["blur_sigma"]
    assert doc["max_reward"] == 4 and 0 <= doc["reward"] <= 4
    assert load_params(tmp_path / "p1.json") == doc["params"]
    with pytest.raises(OvlabelError, match="at least 2 classes"):
        tune(folder, tmp_path / "p3.json", TuneConfig(vocab="rocket,", progress=False), blip=blip, clip=clip)



# ---- salience runs -------------------------------------------------------------------------------------------

def fake_parent_run(tmp_path: Path, images: Path) -> Path:
    """A complete run over ``images`` with Stage 1.1 masks of classes 1 and 3 in a.png, none in b.png."""
    from ovlabel.io.images import read_file

    run = tmp_path / "parent"
    layout = RunLayout(run)
    vocab = load_vocabulary("sky,red thing,grass,blue thing")
    rows = []
    for i, name in enumerate(["a.png", "b.png"], start=1):
        _, sha = read_file(images / name)
        rows.append({"image_id": i, "file": name, "sha256": sha, "width": 64, "height": 48, "status": "ok",
                     "reason": None, "label_file": f"labels/{name}", "num_masks": 2 if i == 1 else 0})
    left = np.zeros((2, 48, 64), bool)
    left[0, :, :32] = True
    left[1, :, 32:] = True
    sets = {1: MaskSet.concat([MaskSet.from_dense(left[:1], [1], [0.9], "stage1.1"),
                               MaskSet.from_dense(left[1:], [3], [0.9], "stage1.1"),
                               MaskSet.from_dense(left[1:], [2], [0.5], "stage1.2")]), 2: MaskSet.empty()}
    write_masks_and_coco(layout, rows, [(i, sets[i]) for i in (1, 2)], vocab.names, {})
    write_manifest(layout.manifest, rows)
    write_json(layout.run_json, {"status": "complete", "command": "pseudo-label", "settings_key": "x",
                                 "input": {"path": str(images), "kind": "folder", "root": str(images)},
                                 "settings": {"stages": ["1.1", "1.2"], "vocabulary": vocab.to_json()}})
    return run


def test_salience_run_artifacts_params_file_resume_soft_maps_and_refine(tmp_path):
    images = tmp_path / "images"
    save(images / "a.png", two_colours())
    save(images / "b.png", two_colours()[::-1].copy())
    (images / "bad.png").write_text("not an image")
    params = tmp_path / "params.json"
    write_json(params, {"format": PARAMS_FORMAT, "params": {"layer": 3, "head": 5, "threshold": 0.25, "blur_sigma": 0.03}})
    out = tmp_path / "sal"
    args = ["salience", str(images), "--out", str(out), "--classes", "red thing,blue thing", "--keep-soft",
            "--params", str(params), "--head", "mean", *TINY]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "3 images: 2 labelled (2 new, 0 already done), 1 failed" in res.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "complete" and doc["command"] == "salience" and "meaningless" in doc["note"]
    used = doc["settings"]["salience"]
    assert (used["layer"], used["head"], used["threshold"], used["crf"]["blur_sigma"]) == (3, None, 0.25, 0.03)
    assert doc["models"]["blip"]["spec"] == "blip:tiny"
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    assert masks and {m["source"] for m in masks} == {"salience"}
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getAnnIds()) == len(masks) and [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red thing", "blue thing"]
    for name in ("a", "b"):
        lab = read_label_png(out / "labels" / f"{name}.png")
        assert lab.shape == (48, 64) and set(np.unique(lab)) <= {0, 1, 255}
        probs, classes = read_soft_map(out / "soft" / f"{name}.npz")
        assert probs.shape[1:] == (48, 64) and set(classes.tolist()) <= {0, 1} and probs.sum(0).max() <= 1.001
    before = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    again = runner.invoke(app, args)
    assert "2 labelled (0 new, 2 already done)" in again.output
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == before
    changed = runner.invoke(app, ["salience", str(images), "--out", str(out), "--classes", "red thing,blue thing", *TINY])
    assert changed.exit_code == 2 and "--overwrite" in changed.output
    refined = runner.invoke(app, ["refine", str(out), "--out", str(tmp_path / "crf"), "--workers", "1", "--no-progress"])
    assert refined.exit_code == 0 and "2 from soft maps" in refined.output, refined.output


def test_salience_on_a_run_uses_each_images_stage11_classes(tmp_path):
    images = tmp_path / "images"
    save(images / "a.png", two_colours())
    save(images / "b.png", two_colours())
    parent = fake_parent_run(tmp_path, images)
    out = tmp_path / "sal"
    res = runner.invoke(app, ["salience", str(parent), "--out", str(out), "--threshold", "0", "--no-crf", *TINY])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["settings"]["classes_from"] == "stage1.1 masks of the parent run"
    assert doc["settings"]["vocabulary"]["classes"] == ["sky", "red thing", "grass", "blue thing"]
    a, b = read_label_png(out / "labels" / "a.png"), read_label_png(out / "labels" / "b.png")
    assert set(np.unique(a)) <= {1, 3, 255} and (a != 255).any()  # threshold 0: every pixel gets a detected class
    assert (b == 255).all()  # nothing detected: nothing to look for
    inside = runner.invoke(app, ["salience", str(parent), "--out", str(parent / "x"), *TINY])
    assert inside.exit_code == 2 and "inside the input" in inside.output
