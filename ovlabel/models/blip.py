"""BLIP image-text matching (Hugging Face ``transformers``): cross-attention maps and their ITM gradients.

PnP-OVSS (seed 004 §3) feeds an image and the prompt "A picture of {c1} {c2} … {cK}" to BLIP's ITM branch
(ViT image encoder, BERT text encoder with a cross-attention layer in every block, §9) and reads the
text-to-image cross-attention of one layer. :meth:`BlipModel.attention_and_gradients` returns, for chosen
layers, that attention and the gradient of the ITM "match" logit with respect to it (§3.1), from one
forward and one ``torch.autograd.grad`` call for the whole batch and every class of each image.

How the gradient is taken: the weights stay frozen (``requires_grad=False``); a forward hook turns the
query projection of the lowest requested cross-attention layer into a leaf that requires grad, so autograd
records only the text layers from there on (the vision tower runs without a graph), and
``torch.autograd.grad(match_logit.sum(), attention_maps)`` computes exactly the gradients needed. A full
``loss.backward()`` over the weights costs 2.5x more (docs/salience.md, DESIGN.md).

First token: original BLIP (salesforce/BLIP ``models/blip_retrieval.py``, LAVIS
``blip_image_text_matching.py``, and PnP-OVSS's copy of it, letitiabanana/PnP-OVSS ``Files to replace for
BLIP/blip_image_text_matching.py``: ``encoder_input_ids[:, 0] = self.tokenizer.enc_token_id``) replaces the
tokenizer's ``[CLS]`` by its ``[ENC]`` token before image-text matching, and the ITM head reads that
position. Hugging Face's ``BlipForImageTextRetrieval`` keeps ``[CLS]`` (transformers issues #22732, #25629).
:meth:`BlipModel.prompt` puts ``[ENC]`` there by default (``itm_token="enc"``); ``"cls"`` keeps ``[CLS]``.

Token positions: the tokenizer adds ``[CLS]`` (position 0) and ``[SEP]``; a class's span is the positions
whose characters lie inside its name in the prompt, so a class of several word pieces ("traffic light",
"zebrafish" -> ``zebra ##fish``) gets all of them, and "A picture of" gets none (§3: those tokens are
excluded). Image key position 0 is ViT's class token; maps returned here drop it, so patch ``n`` of a
``g x g`` grid is row ``n // g``, column ``n % g``.
"""

from __future__ import annotations

import functools
import string
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.device import autocast, seeded
from ovlabel.errors import OvlabelError
from ovlabel.vocab import prompt_name

#: BLIP's image normalisation (its processor uses OpenAI CLIP's mean and std).
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The prompt of seed 004 §3; class names follow, separated by spaces.
PROMPT_PREFIX = "A picture of"
#: Bump when the tiny configuration changes.
TINY_VERSION = 2
#: Original BLIP's tokenizer is bert-base-uncased (30522 pieces) plus ``[DEC]`` (30522) and ``[ENC]`` (30523),
#: added in that order by ``init_tokenizer`` (salesforce/BLIP ``models/blip.py``); the Hugging Face checkpoints
#: keep the 30524-row embedding but their tokenizer files do not name the two added tokens.
BLIP_VOCAB_SIZE, BLIP_ENC_TOKEN_ID = 30524, 30523
#: Accepted ``itm_token`` values: the token at position 0 of every ITM prompt.
ITM_TOKENS = ("enc", "cls")

#: Full-size architectures (the ``config.json`` of the Salesforce/blip-itm-* repos), for ``ARCH/random``.
_VISION = {
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}
_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             max_position_embeddings=512)


@dataclass(frozen=True)
class Prompt:
    """One tokenised prompt: ``ids`` int64 ``(T,)`` with ``[CLS]``/``[SEP]``; ``spans[k]`` = ``(start, stop)``
    token positions of class ``k`` (``stop`` exclusive); ``text`` the prompt string."""

    text: str
    ids: torch.Tensor
    spans: tuple[tuple[int, int], ...]


class BlipModel:
    """A frozen ``BlipForImageTextRetrieval`` on one device.

    Attributes: ``patch_size`` (px), ``native_size`` (the checkpoint's square input, px), ``num_layers`` and
    ``num_heads`` of the text encoder's cross-attention, ``max_tokens``, ``identity`` (provenance),
    ``stats`` (pass counters) and ``timings`` (seconds in ``forward`` and ``backward``).
    """

    def __init__(self, model, tokenizer, identity: dict, device, precision: str):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        vc, tc = model.config.vision_config, model.config.text_config
        self.patch_size = int(vc.patch_size)
        self.native_size = int(vc.image_size)
        self.num_layers = int(tc.num_hidden_layers)
        self.num_heads = int(tc.num_attention_heads)
        self.max_tokens = int(tc.max_position_embeddings)
        self.enc_token_id = enc_token_id(tokenizer, int(tc.vocab_size))
        self.mean = torch.tensor(BLIP_MEAN, device=device).view(3, 1, 1)
        self.std = torch.tensor(BLIP_STD, device=device).view(3, 1, 1)
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()

    def prompt(self, names: list[str], itm_token: str = "enc") -> Prompt:
        """Tokenise "A picture of {c1} … {cK}" for class names ``names`` (vocabulary names; ``_``/``-`` become
        spaces as in every prompt, :func:`ovlabel.vocab.prompt_name`). ``itm_token``: ``enc`` puts BLIP's
        ``[ENC]`` token at position 0 as original BLIP does for image-text matching, ``cls`` keeps the
        tokenizer's ``[CLS]`` (Hugging Face's choice). Raises OvlabelError when the prompt exceeds the text
        encoder's positions, a name yields no token, or ``[ENC]`` is unknown to this checkpoint."""
        if itm_token not in ITM_TOKENS:
            raise OvlabelError(f"itm_token={itm_token!r} is invalid: expected one of {', '.join(ITM_TOKENS)}")
        text, ranges = PROMPT_PREFIX, []
        for name in names:
            phrase = prompt_name(name)
            start = len(text) + 1
            text = f"{text} {phrase}"
            ranges.append((start, len(text)))
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if len(ids) > self.max_tokens:
            raise OvlabelError(
                f"the prompt for {len(names)} classes has {len(ids)} tokens; BLIP's text encoder takes at most "
                f"{self.max_tokens}: give fewer classes per image"
            )
        spans = []
        for name, (a, b) in zip(names, ranges):
            pos = [i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b]
            if not pos:
                raise OvlabelError(f"class name {name!r} yields no token for BLIP's tokenizer")
            assert pos == list(range(pos[0], pos[-1] + 1)), (name, pos)
            spans.append((pos[0], pos[-1] + 1))
        ids = list(ids)
        if itm_token == "enc":
            if self.enc_token_id is None:
                raise OvlabelError(
                    f"{self.identity.get('spec')} has no [ENC] token (its tokenizer does not name one and its text "
                    f"vocabulary is not BLIP's {BLIP_VOCAB_SIZE} pieces); use itm_token 'cls'")
            ids[0] = self.enc_token_id
        return Prompt(text, torch.tensor(ids, dtype=torch.long), tuple(spans))

    def prepare(self, image: np.ndarray, size: int) -> torch.Tensor:
        """Resize an RGB uint8 ``(H, W, 3)`` image to ``size x size`` (bicubic, antialiased: BLIP's processor
        squashes to a square too) and normalise it. Returns float32 ``(3, size, size)`` on the device."""
        if size % self.patch_size:
            raise OvlabelError(f"BLIP input size {size} is not a multiple of its patch size {self.patch_size}")
        t = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device)
        t = t.permute(2, 0, 1)[None].float() / 255.0
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return ((t[0] - self.mean) / self.std).contiguous()

    def attention_and_gradients(
        self, pixels: torch.Tensor, prompts: list[Prompt], layers: list[int]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention maps of ``layers`` (0-based text-encoder layers) and the gradient of the ITM match
        logit (the ITM head's "matching" output, summed over the batch; images do not interact) with respect
        to them.

        ``pixels`` float32 ``(B, 3, S, S)`` from :meth:`prepare`; ``prompts`` one per image (padded here).
        Returns ``{layer: (attn, grad)}``, each float32 ``(B, heads, T, g*g)`` on the device: softmax
        attention of text token ``t`` over the image patches (ViT's class token dropped) and its gradient.
        Padding positions (``t >= len(prompt.ids)``) are zero. Runs with autograd on, outside inference mode.
        """
        layers = sorted(set(layers))
        if not layers or layers[0] < 0 or layers[-1] >= self.num_layers:
            raise OvlabelError(f"cross-attention layers {[i + 1 for i in layers]} out of range 1..{self.num_layers}")
        b = pixels.shape[0]
        t = max(len(p.ids) for p in prompts)
        ids = torch.zeros((b, t), dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p.ids)] = p.ids
            mask[i, : len(p.ids)] = 1
        blocks = self.model.text_encoder.encoder.layer
        captured: dict[int, torch.Tensor] = {}
        hooks = [blocks[layers[0]].crossattention.self.query.register_forward_hook(
            lambda _m, _i, out: out.detach().requires_grad_(True))]
        for layer in layers:
            hooks.append(blocks[layer].crossattention.self.register_forward_hook(
                lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out[1])))
        sync = self.device.type == "cuda"
        try:
            with torch.inference_mode(False), torch.enable_grad():
                pixels, ids, mask = pixels.clone().to(self.device), ids.to(self.device), mask.to(self.device)
                tic = time.perf_counter()
                with autocast(self.device, self.precision):
                    with torch.no_grad():
                        image_embeds = self.model.vision_model(
                            pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
                    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
                    hidden = self.model.text_encoder(
                        input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts).last_hidden_state
                    match = self.model.itm_head(hidden[:, 0, :])[:, 1]
                if sync:
                    torch.cuda.synchronize(self.device)
                toc = time.perf_counter()
                maps = [captured[layer] for layer in layers]
                grads = torch.autograd.grad(match.float().sum(), maps)
                if sync:
                    torch.cuda.synchronize(self.device)
                self.timings["forward"] += toc - tic
                self.timings["backward"] += time.perf_counter() - toc
        finally:
            for h in hooks:
                h.remove()
        self.stats["blip_passes"] += 1
        self.stats["blip_images"] += b
        valid = mask[:, None, :, None].float()
        return {
            layer: ((a.detach()[..., 1:].float() * valid), (g[..., 1:].float() * valid))
            for layer, a, g in zip(layers, maps, grads)
        }


def enc_token_id(tokenizer, vocab_size: int) -> int | None:
    """The id of BLIP's ``[ENC]`` token: the tokenizer's, if it names one; else :data:`BLIP_ENC_TOKEN_ID` when
    the text encoder has BLIP's :data:`BLIP_VOCAB_SIZE` embedding rows (the Hugging Face checkpoints); else
    None."""
    vocab = tokenizer.get_vocab()
    if "[ENC]" in vocab:
        return int(vocab["[ENC]"])
    return BLIP_ENC_TOKEN_ID if vocab_size == BLIP_VOCAB_SIZE else None


def tiny_vocab() -> list[str]:
    """The tiny tokenizer's word pieces: special tokens, "a picture of", every word of the packaged
    vocabulary presets (sorted), and single characters with their ``##`` continuations, so any ASCII name
    tokenises (unknown words into several pieces), then BLIP's ``[DEC]`` and ``[ENC]`` last, as BLIP adds
    them. Deterministic: same package, same vocabulary."""
    from importlib import resources

    words = set()
    for f in sorted(resources.files("ovlabel").joinpath("data", "vocabularies").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".txt"):
            for line in f.read_text(encoding="utf-8").lower().splitlines():
                words.update(w for w in line.replace(",", " ").replace("_", " ").replace("-", " ").split()
                             if w.isalpha() and w.isascii())
    chars = string.ascii_lowercase + string.digits
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of"]
    pieces += sorted(words) + list(chars) + list(string.punctuation) + ["##" + c for c in chars]
    return list(dict.fromkeys(pieces)) + ["[DEC]", "[ENC]"]


@functools.lru_cache(maxsize=1)
def build_tiny_tokenizer():
    """A BERT word-piece tokenizer (``BertTokenizerFast``) over :func:`tiny_vocab`, built in memory (once per
    process; it is only read)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def build_blip(arch: str, vocab_size: int | None = None):
    """A random-initialised ``BlipForImageTextRetrieval`` (seeded). ``arch`` ``tiny`` (ViT 64 px / patch 16,
    width 32, 2 layers; text width 24 with the 12 layers x 12 heads of BERT-base, so every layer and head of
    seed 004 Tab. 2 exists) or a :data:`ovlabel.models.registry.BLIP_ARCHS` name (full size). Weights are
    re-drawn with std 0.02: BlipConfig's vision default (1e-10) yields denormals that slow CPU kernels."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    if arch == "tiny":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64)
        text = dict(vocab_size=vocab_size, hidden_size=24, intermediate_size=48, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=512)
        proj = 16
    else:
        vision = dict(_VISION["large" if "large" in arch else "base"], image_size=384)
        text = dict(_TEXT)
        proj = 256
    text.update(pad_token_id=0, bos_token_id=None, sep_token_id=None, eos_token_id=None)
    cfg = BlipConfig(vision_config=dict(vision, patch_size=16, initializer_range=0.02), text_config=text,
                     image_text_hidden_size=proj)
    with seeded():
        model = BlipForImageTextRetrieval(cfg)
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
    return model


def load_blip(spec, device, precision: str) -> BlipModel:
    """Build a :class:`BlipModel` for a parsed ``blip:`` spec (see :mod:`ovlabel.models.registry`)."""
    from ovlabel.models.weights import blip_weights_file, identity

    if spec.random_init:
        tokenizer = build_tiny_tokenizer()
        model = build_blip(spec.arch, len(tokenizer)) if spec.kind == "tiny" else build_blip(spec.arch)
        return BlipModel(model, tokenizer, identity(spec, None), device, precision)
    from transformers import BertTokenizerFast, BlipForImageTextRetrieval

    from ovlabel.models.checkpoint import check_file, load_error

    path = blip_weights_file(spec)
    folder = path.parent
    expected = f"a BLIP image-text-matching model ({spec.arch}) saved by save_pretrained"
    check_file(path, "BLIP weights", expected)
    try:
        model = BlipForImageTextRetrieval.from_pretrained(str(folder), use_safetensors=path.suffix == ".safetensors")
        tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    except Exception as exc:
        raise load_error(path, exc, "BLIP weights", expected) from None
    return BlipModel(model, tokenizer, identity(spec, path), device, precision)
