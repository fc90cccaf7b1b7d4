"""Before any model is loaded: is every weight the command needs here, or can it be fetched?

A command that needs pretrained weights calls :func:`require_weights` with all its model specs first. For
each weight that is not in its cache yet, the host it comes from is checked once, quickly
(:func:`ovlabel.io.net.unreachable`: a name lookup and a TCP connection with a 3-second timeout, through
the proxy when ``HTTPS_PROXY`` is set), instead of letting the download libraries retry for a minute. If
any missing weight cannot be fetched, one :class:`~ovlabel.errors.WeightsUnavailable` names every missing
weight of the command, where it comes from and where to put it, before anything is loaded or a run
directory is touched. ``OVLABEL_OFFLINE=1`` skips the network checks and treats every host as unreachable;
``HF_HUB_OFFLINE=1`` does so for the Hugging Face Hub. When everything missing is reachable, the loaders
download it as before (with progress bars).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ovlabel.errors import WeightsUnavailable
from ovlabel.io.net import hf_host, unreachable


@dataclass
class Needed:
    """One file a model needs: what it is, the ``host`` it comes from, where it comes from and where to put
    it (``source``, ``put``), and whether it is already ``present``."""

    what: str
    host: str
    source: str
    put: str
    present: bool


def needed_files(slot: str, spec) -> list[Needed]:
    """The downloadable files of a model spec (none for tiny/random models or local files); ``slot``: the
    option that names the model (``sam`` for a ``sam2:`` spec, ``bert`` for ``--text-encoder``)."""
    from ovlabel.models import weights as w
    from ovlabel.models.weights import weights_file

    if spec.random_init or spec.kind == "file":
        return []
    family = spec.family
    flag = f"--{slot}" if slot != "bert" else "--text-encoder"
    out = []
    if family in ("blip", "bert"):
        repo = spec.weights
        present = _hf_cached(repo) if family == "bert" else weights_file(spec, download=False) is not None
        out.append(Needed(f"{spec.name} weights", hf_host(), f"Hugging Face repo {repo}",
                          f"the Hugging Face cache ($HF_HOME/hub: `huggingface-cli download {repo}` on a connected "
                          f"machine, then copy it), or a save_pretrained folder: "
                          f"{flag} {'blip:' + spec.arch + '/' if family == 'blip' else ''}FOLDER",
                          present))
        return out
    if family == "clip" and spec.kind == "pretrained":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights) or {}
        present = w.open_clip_cached_file(spec.arch, spec.weights) is not None
        if cfg.get("hf_hub"):
            repo = cfg["hf_hub"].rstrip("/")
            out.append(Needed(f"{spec.name} weights", hf_host(), f"Hugging Face repo {repo}",
                              f"the Hugging Face cache ($HF_HOME/hub: `huggingface-cli download {repo}`), or a "
                              f"file: --clip clip:{spec.arch}/PATH", present))
        else:
            url = cfg.get("url", "")
            out.append(Needed(f"{spec.name} weights", urlparse(url).hostname or "", url,
                              f"~/.cache/clip/{os.path.basename(url)}, or --clip clip:{spec.arch}/PATH", present))
        return out
    url = spec.weights if spec.kind == "url" else (
        w.dinov2_checkpoint_url(spec.arch) if family == "dinov2" else
        (w.SAM2_CHECKPOINT_URLS if family == "sam2" else w.SAM_CHECKPOINT_URLS)[spec.arch])
    dest = w.url_cache_path(url)
    out.append(Needed(f"{spec.name} weights", urlparse(url).hostname or "", url,
                      f"{dest}, or a file: {flag} {family}:{spec.arch}/PATH", dest.is_file()))
    if family == "dinov2":
        out.append(_dinov2_code())
    return out


def _hf_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:
        return False


def _dinov2_code() -> Needed:
    """DINOv2's model code, which torch.hub fetches from GitHub (or ``$OVLABEL_DINOV2_HUB``)."""
    import torch

    from ovlabel.models.dinov2 import DINOV2_HUB_REPO, HUB_ENV

    local = os.environ.get(HUB_ENV)
    cached = Path(torch.hub.get_dir()) / (DINOV2_HUB_REPO.split(":")[0].replace("/", "_") + "_main")
    present = bool(local and Path(local).expanduser().is_dir()) or cached.is_dir()
    return Needed("the DINOv2 model code (torch.hub)", "github.com", "https://github.com/facebookresearch/dinov2",
                  f"{cached} (torch.hub's copy), or a clone anywhere with {HUB_ENV}=/path/to/dinov2", present)


def require_weights(specs: dict, command: str) -> None:
    """Raise :class:`WeightsUnavailable` naming every weight of ``specs`` (``{family: ModelSpec}``) that is
    neither cached nor reachable; returns quietly when each is cached or its host answers."""
    lines = []
    for family, spec in specs.items():
        for need in needed_files(family, spec):
            if need.present:
                continue
            why = unreachable(need.host) if need.host else "no download location"
            if why:
                lines.append(f"  - {need.what}: from {need.source} ({why}); put it in {need.put}")
    if lines:
        raise WeightsUnavailable(
            f"`{command}` needs {len(lines)} file{'s' if len(lines) > 1 else ''} that {'are' if len(lines) > 1 else 'is'} "
            f"not on this machine and cannot be downloaded now:\n" + "\n".join(lines)
            + "\n(tiny random models for a dry run: --models tiny; docs/troubleshooting.md, \"Offline\")")
