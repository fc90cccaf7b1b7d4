"""Language-only text encoders (BERT-style, through transformers) for Stage 2, as Fusioner pairs them.

Fusioner (seed 000, "Ability to Bridge Different Pre-trained Backbones") pairs frozen visual models with
frozen *language-only* models (BERT-B, BERT-L) as well as with CLIP's text tower, and finds the pairing
works "even for models that are pre-trained on a corpus of uni-modal data". Fusioner's released code
(chaofanma/Fusioner, model/text_encoder.py) only ships the CLIP text tower, so how a BERT sentence
feature is read out is not published: ovlabel's choice is the mean of the last hidden states over the
real (non-padding) tokens of each prompt, because BERT's ``[CLS]`` state is not trained to summarise a
sentence without fine-tuning (Reimers & Gurevych, Sentence-BERT, 2019, report mean pooling as the better
of the two). Prompts are built with the same templates and synonym averaging as CLIP's
(:func:`ovlabel.text.class_text_features`), so this wrapper has CLIP's text interface: ``encode_text``,
``cache_key``, ``device``, ``identity``.

Model strings: ``bert:tiny`` (a tiny random BERT built from the config and vocabulary shipped in
``ovlabel/data/text_encoders/bert-tiny``: same transformers code path, meaningless output), ``bert:NAME``
for a Hugging Face repo such as ``bert:bert-base-uncased`` (downloaded into ``$HF_HOME`` on first use),
``bert:FOLDER`` for a ``save_pretrained`` folder. A bare name (``bert-base-uncased``) means ``bert:NAME``.
Any encoder ``AutoModel`` loads works (BERT, RoBERTa, DistilBERT, ...).
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ovlabel.device import autocast, seeded
from ovlabel.errors import OvlabelError, WeightsUnavailable

#: Bump when the tiny configuration changes, so cached tiny text embeddings are not reused.
TINY_VERSION = 1


def tiny_config_dir() -> Path:
    """The folder holding the tiny BERT's ``config.json``, ``vocab.txt`` and ``tokenizer_config.json``."""
    return Path(str(resources.files("ovlabel").joinpath("data", "text_encoders", "bert-tiny")))


def parse_text_encoder(value: str):
    """A ``--text-encoder`` value as a :class:`~ovlabel.models.registry.ModelSpec` of family ``bert``
    (``kind`` tiny, pretrained (a Hub repo id) or file (a local folder)); ``clip`` is handled by the caller."""
    from ovlabel.models.registry import ModelSpec

    raw = value.strip()
    name = raw[len("bert:"):] if raw.startswith("bert:") else raw
    if not name:
        raise OvlabelError(f"empty text encoder {value!r}: use clip, bert:tiny or a Hugging Face model such as bert-base-uncased")
    if name == "tiny":
        return ModelSpec("bert", "tiny", "tiny", "")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OvlabelError(f"text encoder folder '{path}' has no config.json (save it with save_pretrained)")
        return ModelSpec("bert", path.name, "file", str(path.resolve()))
    if "/" in name and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise OvlabelError(f"text encoder folder '{name}' does not exist")
    return ModelSpec("bert", name, "pretrained", name)


class TextEncoder:
    """A frozen transformers encoder on one device, with CLIP's text interface.

    ``embed_dim``: hidden size D; ``identity``: provenance dict; ``stats``: counters.
    """

    def __init__(self, model, tokenizer, identity: dict, device, precision: str, max_length: int = 77):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        self.max_length = max_length
        self.embed_dim = int(model.config.hidden_size)
        self.stats: Counter = Counter()

    @property
    def cache_key(self) -> str:
        ident = self.identity
        if ident["random_init"]:
            return f"{ident['spec']}|random-seed0|v{TINY_VERSION}"
        return f"{ident['spec']}|{ident['sha256']}"

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 sentence features ``(len(texts), D)``: the mean of the last hidden states
        over each prompt's non-padding tokens (see the module docstring)."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with autocast(self.device, self.precision):
                hidden = self.model(**enc).last_hidden_state.float()  # (B, T, D)
            w = enc["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0))
        self.stats["text_prompts"] += len(texts)
        return F.normalize(torch.cat(out), dim=-1)


def build_tiny_text_encoder():
    """The tiny random BERT (2 layers, width 32) and its character-level tokenizer, loaded through
    ``AutoConfig``/``AutoModel.from_config``/``AutoTokenizer`` from the shipped folder; seeded."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = tiny_config_dir()
    config = AutoConfig.from_pretrained(str(folder))
    with seeded():
        model = AutoModel.from_config(config)
    return model, AutoTokenizer.from_pretrained(str(folder))


def _weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    from ovlabel.io.net import fail_fast, hf_host

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
        except Exception:
            fail_fast(hf_host())  # not cached: seconds, not a minute of retries, when offline
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:  # offline, HTTP error, unknown repo
        raise WeightsUnavailable(
            f"cannot obtain the text encoder '{repo}' ({type(exc).__name__}: {exc}).\n"
            f"Needed: the Hugging Face repo '{repo}' (config.json, model.safetensors, tokenizer files), cached under "
            f"{HF_HUB_CACHE} (set HF_HOME to move it). Offline? Download it on a connected machine "
            f"(`huggingface-cli download {repo}`) and copy the cache over, or save it to a folder and pass "
            f"--text-encoder bert:/PATH/TO/FOLDER"
        ) from None


def load_text_encoder(spec, device, precision: str) -> TextEncoder:
    """Build a :class:`TextEncoder` for a parsed ``bert:`` spec (see :func:`parse_text_encoder`)."""
    from ovlabel.models.weights import identity

    if spec.kind == "tiny":
        model, tokenizer = build_tiny_text_encoder()
        return TextEncoder(model, tokenizer, identity(spec, None), device, precision)
    from transformers import AutoModel, AutoTokenizer

    folder = Path(spec.weights) if spec.kind == "file" else _snapshot(spec.weights)
    path = _weights_file(folder)
    if path is None:
        raise OvlabelError(f"text encoder folder '{folder}' has no model.safetensors or pytorch_model.bin")
    from ovlabel.models.checkpoint import check_file, load_error

    expected = "a transformers text model saved by save_pretrained"
    check_file(path, "text-encoder weights", expected)
    try:
        model = AutoModel.from_pretrained(str(folder), use_safetensors=path.suffix == ".safetensors")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise load_error(path, exc, "text-encoder weights", expected) from None
    return TextEncoder(model, tokenizer, identity(spec, path), device, precision)
