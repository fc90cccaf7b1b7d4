"""The one registry of model strings.

Syntax: ``FAMILY:ARCH[/WEIGHTS]``.

- ``clip:ARCH/TAG`` an open_clip architecture and pretrained tag, e.g. ``clip:ViT-L-14/openai``
  (FMbSeg's choice, seed 003 §4.1). Without a tag, ``openai`` when it exists.
- ``sam:vit_h``, ``sam:vit_l``, ``sam:vit_b``: segment-anything with the official checkpoint.
- ``sam2:hiera_large``, ``sam2:hiera_base_plus``, ``sam2:hiera_small``, ``sam2:hiera_tiny``: SAM 2.1 through the
  ``sam2`` package (optional extra ``sam2``) with the official checkpoint; accepted wherever a ``sam`` model
  is (``--sam sam2:hiera_large``). ``sam2:tiny`` is its tiny random variant.
- ``dinov2:dinov2_vitl14`` (FMbSeg's choice, seed 003 §4.1), ``dinov2_vits14``, ``dinov2_vitb14``,
  ``dinov2_vitg14``, each also with registers (``dinov2_vitb14_reg``): DINOv2 through torch.hub with the
  official checkpoint (see :mod:`ovlabel.models.dinov2`).
- ``WEIGHTS`` may instead be a local file (``clip:ViT-B-16/ckpt/model.bin``), an ``http(s)://`` URL
  (downloaded once into ``$TORCH_HOME/hub/checkpoints``), or ``random`` (full-size architecture,
  random weights: for timing only).
- ``blip:itm-large-flickr`` (the checkpoint PnP-OVSS's released code loads and tuned layer 8 / head 10 on:
  letitiabanana/PnP-OVSS ``Files to replace for BLIP/blip_itm_large.yaml`` names
  ``model_large_retrieval_flickr.pth``; seed 004 §9 names "two checkpoints for image retrieval on COCO and
  Flickr"), ``blip:itm-large-coco``, ``blip:itm-base-coco``, ``blip:itm-base-flickr``: BLIP image-text
  matching from the Hugging Face repo ``Salesforce/blip-<arch>``;
  ``blip:ARCH/FOLDER`` a local folder saved by ``save_pretrained`` (config, weights, tokenizer files).
- ``clip:tiny``, ``sam:tiny``, ``dinov2:tiny`` and ``blip:tiny``: tiny random-initialised models on the same code path, for
  tests and offline demos. Their outputs are meaningless and runs record that in ``run.json``.

OpenAI CLIP checkpoints need QuickGELU; for a local file of OpenAI weights name the ``-quickgelu``
architecture (``clip:ViT-L-14-quickgelu/PATH``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ovlabel.errors import OvlabelError
from ovlabel.models.weights import identity, weights_file  # re-exported: where a spec's weights are

__all__ = ["FAMILIES", "KNOWN_MODELS", "MODEL_PRESETS", "ModelSpec", "identity", "load_model", "parse_model",
           "resolve_models", "weights_file"]

FAMILIES = ("clip", "sam", "sam2", "dinov2", "blip")
SAM_ARCHS = ("vit_h", "vit_l", "vit_b")
SAM2_ARCHS = ("hiera_large", "hiera_base_plus", "hiera_small", "hiera_tiny")
#: torch.hub entry points of facebookresearch/dinov2 (backbones; ``_reg``: with 4 register tokens).
DINOV2_ARCHS = tuple(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg"))
BLIP_ARCHS = ("itm-large-coco", "itm-base-coco", "itm-large-flickr", "itm-base-flickr")

#: ``--models`` presets: one spec per family.
MODEL_PRESETS = {
    "default": {
        "clip": "clip:ViT-L-14/openai", "sam": "sam:vit_h", "dinov2": "dinov2:dinov2_vitl14", "blip": "blip:itm-large-flickr",
    },
    "tiny": {"clip": "clip:tiny", "sam": "sam:tiny", "dinov2": "dinov2:tiny", "blip": "blip:tiny"},
}

#: Models ``ovlabel models`` lists (any open_clip ViT with a class token works, these are the usual ones).
KNOWN_MODELS = (
    ("clip:ViT-L-14/openai", "CLIP ViT-L/14, OpenAI weights (FMbSeg's choice, default)"),
    ("clip:ViT-L-14-336/openai", "CLIP ViT-L/14 at 336 px, OpenAI weights"),
    ("clip:ViT-B-16/openai", "CLIP ViT-B/16, OpenAI weights (OVSeg's small model)"),
    ("clip:ViT-B-16/laion2b_s34b_b88k", "CLIP ViT-B/16, LAION-2B"),
    ("clip:ViT-L-14/laion2b_s32b_b82k", "CLIP ViT-L/14, LAION-2B"),
    ("clip:ViT-H-14/laion2b_s32b_b79k", "CLIP ViT-H/14, LAION-2B"),
    ("clip:tiny", "tiny random CLIP for tests and offline demos (meaningless output)"),
    ("sam:vit_h", "Segment Anything ViT-H, 2.4 GB (default)"),
    ("sam:vit_l", "Segment Anything ViT-L, 1.2 GB"),
    ("sam:vit_b", "Segment Anything ViT-B, 358 MB"),
    ("sam:tiny", "tiny random SAM for tests and offline demos (meaningless output)"),
    ("sam2:hiera_large", "SAM 2.1 Hiera-L, 898 MB (extra 'sam2'; --sam sam2:...)"),
    ("sam2:hiera_base_plus", "SAM 2.1 Hiera-B+, 324 MB (extra 'sam2')"),
    ("sam2:hiera_small", "SAM 2.1 Hiera-S, 185 MB (extra 'sam2')"),
    ("sam2:hiera_tiny", "SAM 2.1 Hiera-T, 156 MB (extra 'sam2')"),
    ("sam2:tiny", "tiny random SAM 2 for tests and offline demos (meaningless output)"),
    ("dinov2:dinov2_vitl14", "DINOv2 ViT-L/14, 1.2 GB (FMbSeg's choice, default for train-align)"),
    ("dinov2:dinov2_vitb14", "DINOv2 ViT-B/14, 346 MB"),
    ("dinov2:dinov2_vits14", "DINOv2 ViT-S/14, 88 MB"),
    ("dinov2:dinov2_vitg14", "DINOv2 ViT-g/14, 4.5 GB"),
    ("dinov2:dinov2_vitl14_reg", "DINOv2 ViT-L/14 with registers"),
    ("dinov2:dinov2_vitb14_reg", "DINOv2 ViT-B/14 with registers"),
    ("dinov2:tiny", "tiny random DINOv2-shaped ViT for tests and offline demos (meaningless output)"),
    ("blip:itm-large-flickr", "BLIP ITM ViT-L, Flickr30k retrieval (PnP-OVSS's released code, default for salience)"),
    ("blip:itm-large-coco", "BLIP ITM ViT-L, COCO retrieval"),
    ("blip:itm-base-coco", "BLIP ITM ViT-B, COCO retrieval"),
    ("blip:tiny", "tiny random BLIP for tests and offline demos (meaningless output)"),
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string.

    ``kind`` is ``tiny``, ``random``, ``pretrained`` (a known tag / official checkpoint), ``url`` or
    ``file``; ``weights`` is the tag, URL or absolute file path (empty for tiny/random).
    """

    family: str
    arch: str
    kind: str
    weights: str

    @property
    def name(self) -> str:
        if self.kind == "tiny":
            return f"{self.family}:tiny"
        if self.family in ("blip", "bert") and self.kind == "pretrained":
            return f"{self.family}:{self.arch}"
        return f"{self.family}:{self.arch}/{self.weights or self.kind}"

    @property
    def random_init(self) -> bool:
        return self.kind in ("tiny", "random")


def parse_model(value: str, family: str) -> ModelSpec:
    """Parse a model string for ``family`` (``clip``, ``sam``, ``sam2``, ``dinov2`` or ``blip``); the ``family:``
    prefix is optional. A ``sam2:`` string is accepted for ``sam`` and gives a ``sam2`` spec.

    Raises :class:`OvlabelError` naming the bad part and the accepted values.
    """
    raw = value.strip()
    prefix, colon, rest = raw.partition(":")
    if colon and re.fullmatch(r"[a-z0-9_]+", prefix):
        if family == "sam" and prefix == "sam2":  # SAM 2 serves wherever SAM does
            family = "sam2"
        if prefix != family:
            raise OvlabelError(f"model '{value}' is a {prefix} model but a {family} model is needed here")
    else:
        rest = raw
    arch, _, weights = rest.partition("/")
    arch = arch.strip()
    if not arch:
        raise OvlabelError(f"empty model name '{value}'; see `ovlabel models`")
    if arch == "tiny":
        if weights:
            raise OvlabelError(f"'{value}': the tiny {family} model takes no weights")
        return ModelSpec(family, "tiny", "tiny", "")
    if family == "clip":
        return _parse_clip(value, arch, weights)
    if family in _OFFICIAL:
        return _parse_official(value, family, arch, weights)
    if family == "blip":
        return _parse_blip(value, arch, weights)
    raise OvlabelError(f"unknown model family '{family}': use one of {', '.join(FAMILIES)}")


def _weights_kind(value: str, family: str, arch: str, weights: str, known: list[str]) -> ModelSpec:
    if weights == "random":
        return ModelSpec(family, arch, "random", "")
    if re.match(r"https?://", weights):
        return ModelSpec(family, arch, "url", weights)
    if weights in known:
        return ModelSpec(family, arch, "pretrained", weights)
    path = Path(weights).expanduser()
    if path.is_file():
        return ModelSpec(family, arch, "file", str(path.resolve()))
    raise OvlabelError(
        f"weights '{weights}' in '{value}' are neither a known tag ({', '.join(known) or 'none'}), "
        f"'random', an http(s) URL, nor an existing file"
    )


def _parse_clip(value: str, arch: str, weights: str) -> ModelSpec:
    import open_clip

    if arch not in open_clip.list_models():
        near = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:5])][:8]
        raise OvlabelError(
            f"unknown CLIP architecture '{arch}' in '{value}'; open_clip knows e.g. {', '.join(near) or 'ViT-B-16, ViT-L-14'}"
            f" (full list: python -c 'import open_clip; print(open_clip.list_models())')"
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not weights:
        if "openai" not in tags:
            raise OvlabelError(f"'{value}': name the weights, e.g. clip:{arch}/{tags[0] if tags else 'PATH'}")
        weights = "openai"
    return _weights_kind(value, "clip", arch, weights, tags)


#: Families whose weights are one official checkpoint per architecture: (architectures, name in messages).
_OFFICIAL = {"sam": (SAM_ARCHS, "SAM"), "sam2": (SAM2_ARCHS, "SAM 2"), "dinov2": (DINOV2_ARCHS, "DINOv2")}


def _parse_official(value: str, family: str, arch: str, weights: str) -> ModelSpec:
    archs, label = _OFFICIAL[family]
    if arch not in archs:
        raise OvlabelError(f"unknown {label} architecture '{arch}' in '{value}': use one of {', '.join(archs)} or tiny")
    if not weights:
        return ModelSpec(family, arch, "pretrained", "official")
    return _weights_kind(value, family, arch, weights, ["official"])


def _parse_blip(value: str, arch: str, weights: str) -> ModelSpec:
    if arch not in BLIP_ARCHS:
        raise OvlabelError(f"unknown BLIP model '{arch}' in '{value}': use one of {', '.join(BLIP_ARCHS)} or tiny")
    if not weights:
        return ModelSpec("blip", arch, "pretrained", blip_repo(arch))
    if weights == "random":
        return ModelSpec("blip", arch, "random", "")
    path = Path(weights).expanduser()
    if path.is_dir():
        return ModelSpec("blip", arch, "file", str(path.resolve()))
    raise OvlabelError(
        f"weights '{weights}' in '{value}' are neither 'random' nor an existing folder saved by save_pretrained "
        f"(config.json, model weights, tokenizer files); leave them out to use {blip_repo(arch)}"
    )


def blip_repo(arch: str) -> str:
    """The Hugging Face repo of a BLIP ITM architecture name (``itm-large-coco`` -> ``Salesforce/blip-itm-large-coco``)."""
    return f"Salesforce/blip-{arch}"


def resolve_models(
    preset: str, overrides: dict[str, str | None], families: tuple[str, ...] | None = None
) -> dict[str, ModelSpec]:
    """Specs for ``families`` (default: the families named in ``overrides``; a stage asks only for the models
    it uses): the ``--models`` preset's choice, unless its override (``--clip``, ``--sam``, ``--dinov2``,
    ``--blip``) is given."""
    if preset not in MODEL_PRESETS:
        raise OvlabelError(f"unknown --models preset '{preset}': use one of {', '.join(MODEL_PRESETS)}")
    return {f: parse_model(overrides.get(f) or MODEL_PRESETS[preset][f], f) for f in (families or tuple(overrides))}


def load_model(spec: ModelSpec, device, precision: str, **options):
    """Build the wrapper for ``spec`` on ``device`` (downloading weights on first use). ``options``: speed
    knobs of the SAM wrappers (``sdpa``, ``compile``; see :class:`~ovlabel.models.sam.SamModel`), ignored
    by the other families."""
    if spec.family == "clip":
        from ovlabel.models.clip import load_clip

        return load_clip(spec, device, precision)
    if spec.family == "dinov2":
        from ovlabel.models.dinov2 import load_dinov2

        return load_dinov2(spec, device, precision)
    if spec.family == "blip":
        from ovlabel.models.blip import load_blip

        return load_blip(spec, device, precision)
    if spec.family == "sam2":
        from ovlabel.models.sam2 import load_sam2

        return load_sam2(spec, device, precision, **options)
    from ovlabel.models.sam import load_sam

    return load_sam(spec, device, precision, **options)
