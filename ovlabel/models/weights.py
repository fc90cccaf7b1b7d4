"""Where pretrained weights come from, and what to tell the user when they cannot be had.

CLIP weights are fetched by open_clip (Hugging Face Hub into ``$HF_HOME``, or its URL cache
``~/.cache/clip``); SAM and DINOv2 checkpoints by ``torch.hub.download_url_to_file`` into
``$TORCH_HOME/hub/checkpoints``. Both show a progress bar. Any failure (offline machine, firewall, HTTP
error) becomes a :class:`WeightsUnavailable` naming the exact file and how to supply it by hand.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ovlabel.errors import OvlabelError, WeightsUnavailable

#: Seconds a stalled download may wait for data before it fails.
DOWNLOAD_TIMEOUT = 60.0

#: Official segment-anything checkpoints (README of facebookresearch/segment-anything).
SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

#: Official SAM 2.1 checkpoints (facebookresearch/sam2, ``checkpoints/download_ckpts.sh``).
SAM2_CHECKPOINT_URLS = {
    arch: f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_{arch}.pt"
    for arch in ("hiera_large", "hiera_base_plus", "hiera_small", "hiera_tiny")
}


#: Where facebookresearch/dinov2's hub entry points download their backbone checkpoints from.
DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


def dinov2_checkpoint_url(arch: str) -> str:
    """The official checkpoint of a DINOv2 hub entry point (``dinov2_vitb14`` ->
    ``.../dinov2_vitb14/dinov2_vitb14_pretrain.pth``; ``dinov2_vitb14_reg`` -> ``..._reg4_pretrain.pth``),
    the same file ``torch.hub.load("facebookresearch/dinov2", arch)`` would fetch into the same cache."""
    base = arch.removesuffix("_reg")
    full = base + ("_reg4" if arch.endswith("_reg") else "")
    return f"{DINOV2_BASE_URL}/{base}/{full}_pretrain.pth"


def torch_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def url_cache_path(url: str) -> Path:
    """Where a checkpoint downloaded from ``url`` is stored."""
    return torch_checkpoint_dir() / os.path.basename(url.split("?")[0])


def fetch_url(url: str, spec: str, family: str, arch: str, option: str | None = None) -> Path:
    """Return the local copy of ``url``, downloading it (with a progress bar) on first use. ``option``: the
    command-line option that takes this family's model (default: ``--FAMILY``)."""
    import torch

    from ovlabel.io.net import fail_fast

    dest = url_cache_path(url)
    if dest.is_file():
        return dest
    old = socket.getdefaulttimeout()
    try:
        fail_fast(url)  # seconds, not a minute of retries, on an offline machine
        dest.parent.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # urllib's default is to wait forever on a stalled connection
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as exc:  # URLError, HTTPError, OSError, ssl errors: all mean "not available"
        raise WeightsUnavailable(
            f"cannot download weights for {spec}: {url} ({type(exc).__name__}: {exc}).\n"
            f"Needed file: {dest}\n"
            f"Offline? Download {url} on a connected machine and copy it to {dest}, "
            f"or pass a local file with --{option or family} {family}:{arch}/PATH/TO/{dest.name}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return dest


def fetch_open_clip(arch: str, tag: str, spec: str) -> Path:
    """Return the local weights file for open_clip ``arch`` with pretrained ``tag``, downloading it."""
    import open_clip

    from ovlabel.io.net import fail_fast, hf_host

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    try:
        fail_fast(hf_host() if cfg.get("hf_hub") else cfg.get("url", ""))
        path = open_clip.download_pretrained(cfg)
    except Exception as exc:
        raise WeightsUnavailable(_open_clip_missing_message(arch, tag, spec, cfg, exc)) from None
    if not path or not Path(path).is_file():
        raise WeightsUnavailable(_open_clip_missing_message(arch, tag, spec, cfg, None))
    return Path(path)


def _open_clip_missing_message(arch: str, tag: str, spec: str, cfg: dict, exc: Exception | None) -> str:
    where = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin (or open_clip_model.safetensors)"
        where.append(f"Hugging Face repo '{repo}', file {filename} (cached under $HF_HOME/hub)")
    if cfg.get("url"):
        where.append(f"URL {cfg['url']} (cached in ~/.cache/clip/)")
    reason = f" ({type(exc).__name__}: {exc})" if exc else ""
    return (
        f"cannot obtain weights for {spec}{reason}.\n"
        f"Needed: {' or '.join(where)}.\n"
        f"Offline? Fetch that file on a connected machine (e.g. `huggingface-cli download {cfg.get('hf_hub', '').rstrip('/')}`), "
        f"copy the Hugging Face cache over, or pass the file directly: --clip clip:{arch}/PATH/TO/FILE"
    )


def open_clip_cached_file(arch: str, tag: str) -> Path | None:
    """The already-downloaded weights file for an open_clip tag, or None (never downloads)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    if cfg.get("url"):
        p = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if p.is_file():
            return p
    return None


def weights_file(spec, download: bool = True) -> Path | None:
    """Local weights file for ``spec`` (a :class:`ovlabel.models.registry.ModelSpec`): downloaded on first
    use, or with ``download=False`` only if it is already cached (else None). None for tiny/random models."""
    import sys

    w = sys.modules[__name__]
    if spec.random_init:
        return None
    if spec.family == "blip":
        return blip_weights_file(spec, download)
    if spec.kind == "file":
        return Path(spec.weights)
    if spec.family == "clip" and spec.kind == "pretrained":
        return w.fetch_open_clip(spec.arch, spec.weights, spec.name) if download else w.open_clip_cached_file(spec.arch, spec.weights)
    if spec.kind == "url":
        url = spec.weights
    elif spec.family == "dinov2":
        url = w.dinov2_checkpoint_url(spec.arch)
    else:
        url = (w.SAM2_CHECKPOINT_URLS if spec.family == "sam2" else w.SAM_CHECKPOINT_URLS)[spec.arch]
    if download:
        option = "sam" if spec.family == "sam2" else spec.family
        return w.fetch_url(url, spec.name, spec.family, spec.arch, option)
    path = w.url_cache_path(url)
    return path if path.is_file() else None


def identity(spec, path: Path | None) -> dict:
    """Provenance of a loaded model: its string, weights source, file and SHA-256."""
    from ovlabel.cache import file_sha256

    return {
        "spec": spec.name,
        "family": spec.family,
        "arch": spec.arch,
        "weights": spec.weights or spec.kind,
        "file": str(path) if path else None,
        "sha256": file_sha256(path) if path else None,
        "random_init": spec.random_init,
    }


def _blip_missing(spec, exc: Exception | None) -> WeightsUnavailable:
    from huggingface_hub.constants import HF_HUB_CACHE

    reason = f" ({type(exc).__name__}: {exc})" if exc else ""
    repo = spec.weights
    return WeightsUnavailable(
        f"cannot obtain weights for {spec.name}{reason}.\n"
        f"Needed: Hugging Face repo '{repo}' (config.json, model.safetensors, tokenizer files), cached under "
        f"{HF_HUB_CACHE} (set HF_HOME to move it).\n"
        f"Offline? Run `huggingface-cli download {repo}` on a connected machine and copy its Hugging Face cache "
        f"over, or save the model to a folder and pass it: --blip blip:{spec.arch}/PATH/TO/FOLDER"
    )


def _snapshot(spec, download: bool) -> Path | None:
    """Local folder of a pretrained BLIP repo (downloaded with a progress bar on first use)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors"]
    try:
        if download:
            try:
                return Path(snapshot_download(spec.weights, allow_patterns=patterns, local_files_only=True))
            except Exception:
                from ovlabel.io.net import fail_fast, hf_host

                fail_fast(hf_host())  # not cached: seconds, not a minute of retries, when offline
        return Path(snapshot_download(spec.weights, allow_patterns=patterns, local_files_only=not download))
    except Exception as exc:  # offline, HTTP error, missing cache: all mean "not available"
        if not download:
            return None
        raise _blip_missing(spec, exc) from None


def blip_weights_file(spec, download: bool = True) -> Path | None:
    """The weights file of a ``blip:`` spec (safetensors, else a PyTorch bin), downloading a pretrained repo
    on first use; with ``download=False`` None when not cached. None for tiny/random models."""
    if spec.random_init:
        return None
    folder = Path(spec.weights) if spec.kind == "file" else _snapshot(spec, download)
    if folder is None:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    if spec.kind == "file":
        raise OvlabelError(f"folder '{folder}' of {spec.name} has no model.safetensors or pytorch_model.bin")
    if download:
        raise _blip_missing(spec, None)
    return None
