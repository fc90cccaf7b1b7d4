"""Which frozen encoders Stage 2 pairs: a vision encoder (DINOv2, or CLIP's image tower) and a text
encoder (CLIP's text tower, or a language-only BERT-style model), as Fusioner pairs them (seed 000,
"Ability to Bridge Different Pre-trained Backbones": DINO/MoCo/CLIP images x CLIP/BERT texts).

Models are named by family, and a run or checkpoint records them under those names: ``{"dinov2": ...,
"clip": ...}`` for FMbSeg's pairing (so checkpoints and segment runs made before these choices existed keep
their settings keys), ``{"clip": ...}`` alone when CLIP gives both towers (one model is loaded),
``{"dinov2": ..., "bert": ...}`` with a language-only text encoder. A checkpoint's ``vision_encoder`` and
``text_encoder`` identities carry their ``family``, which is how ``segment`` knows which to load.
"""

from __future__ import annotations

from ovlabel.errors import OvlabelError

VISION_ENCODERS = ("dinov2", "clip")


def text_family(text_encoder: str | None) -> str:
    """``clip`` for None/"clip" (CLIP's text tower), else ``bert`` (a transformers model)."""
    return "clip" if text_encoder in (None, "", "clip") else "bert"


def stage2_specs(preset: str, vision: str, text_encoder: str | None, dinov2: str | None, clip: str | None) -> dict:
    """Model specs by family for a vision encoder kind (``dinov2``/``clip``) and a text encoder
    (None/``clip``, or a ``bert:`` string); ``dinov2``/``clip`` override the ``preset``'s choice."""
    from ovlabel.models.registry import parse_model, resolve_models
    from ovlabel.models.text_encoders import parse_text_encoder

    if vision not in VISION_ENCODERS:
        raise OvlabelError(f"unknown vision encoder {vision!r}: use one of {', '.join(VISION_ENCODERS)}")
    specs = {}
    if vision == "dinov2":
        specs["dinov2"] = resolve_models(preset, {"dinov2": dinov2})["dinov2"]
    if vision == "clip" or text_family(text_encoder) == "clip":
        if not clip:
            raise OvlabelError("no CLIP model to use: pass --clip (or train on a run that records its CLIP)")
        specs["clip"] = parse_model(clip, "clip")
    if text_family(text_encoder) == "bert":
        specs["bert"] = parse_text_encoder(text_encoder)
    return specs


def checkpoint_specs(config: dict, dinov2: str | None = None, clip: str | None = None) -> dict:
    """The specs a checkpoint's config names (``dinov2``/``clip`` override the recorded ones, e.g. to
    point at the same weights somewhere else)."""
    from ovlabel.models.registry import parse_model
    from ovlabel.models.text_encoders import parse_text_encoder

    vis, txt = config["vision_encoder"], config["text_encoder"]
    specs = {}
    if vis.get("family", "dinov2") == "dinov2":
        specs["dinov2"] = parse_model(dinov2 or vis["spec"], "dinov2")
    else:
        specs["clip"] = parse_model(clip or vis["spec"], "clip")
    if txt.get("family", "clip") == "clip":
        specs.setdefault("clip", parse_model(clip or txt["spec"], "clip"))
    else:
        specs["bert"] = parse_text_encoder("bert:" + txt["weights"])  # tiny, a Hub repo id, or a folder
    return specs


def load_stage2(specs: dict, vision: str, device, precision: str, injected: dict | None = None):
    """``(vision encoder, text model)`` for the families in ``specs``. ``injected`` may hold ready models
    by family (tests, notebooks). The vision encoder has DINOv2's interface
    (:class:`~ovlabel.models.clip_patches.ClipPatchEncoder` wraps CLIP), the text model CLIP's text one."""
    from ovlabel.models.clip_patches import ClipPatchEncoder

    models = dict(injected or {})
    for family, spec in specs.items():
        if family in models:
            continue
        if family == "bert":
            from ovlabel.models.text_encoders import load_text_encoder

            models[family] = load_text_encoder(spec, device, precision)
        else:
            from ovlabel.models.registry import load_model

            models[family] = load_model(spec, device, precision)
    encoder = models["dinov2"] if vision == "dinov2" else ClipPatchEncoder(models["clip"])
    text = models["bert"] if "bert" in models and "bert" in specs else models["clip"]
    return encoder, text


def model_names(specs: dict, injected: dict | None = None) -> dict:
    """``{family: model string}``: what a run or checkpoint records."""
    if injected:
        return {f: injected[f].identity["spec"] if f in injected else s.name for f, s in specs.items()}
    return {f: s.name for f, s in specs.items()}
