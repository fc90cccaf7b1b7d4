"""``pseudo-label`` and ``classify-masks``: FMbSeg's Stage 1 (seed 003 §3.2) as a stage of the run engine.

Two part folders, one per FMbSeg stage: ``1.1`` (CLIP crop detection, SAM queried with CLIP points) and
``1.2`` (SAM automatic masks classified by CLIP), each keyed by exactly the settings its masks depend on,
so adding Stage 1.2 to a Stage 1.1 run computes only Stage 1.2. One worker computes whatever stages an
image still needs with each encoder pass once (:class:`ovlabel.stages.stage1.Stage1`); the stages are
merged into an image's final masks when the artifacts are rebuilt (:mod:`ovlabel.merge`), so changing the
merge parameters re-merges without a model pass.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ovlabel.config import AutoMaskConfig, ClassifyConfig, DetectConfig, MergeConfig, PseudoLabelConfig
from ovlabel.engine import Output, Stage, Worker, execute, from_images, restrict_to_captions, settings_key
from ovlabel.engine.store import digest
from ovlabel.engine.summary import RunSummary
from ovlabel.errors import OvlabelError
from ovlabel.io.names import recorded_path
from ovlabel.merge import merge_stages, merged_count
from ovlabel.vocab import Templates, Vocabulary, load_templates, load_vocabulary


def portable_name(source: str) -> str:
    """A vocabulary source (``file:/abs/classes.txt``) or template-set name (a preset, or the absolute path
    of a file) without its folder (``file:classes.txt``): settings and data files must not change when a
    checkout moves. Other names are returned as they are."""
    if source.startswith("file:"):
        return "file:" + Path(source[5:]).name
    if Path(source).is_absolute():
        return "file:" + Path(source).name
    return source


def weight_digests(specs: dict) -> dict[str, str]:
    """SHA-256 of the weights of models given as local files (``--sam sam:vit_b/PATH``): the same path can
    hold other weights tomorrow. Published weights (tags, URLs) are pinned by their names. Digests are
    remembered by (path, size, mtime), so this hashes each file once."""
    from ovlabel.cache import file_sha256

    out = {}
    for family, spec in sorted(specs.items()):
        if spec.kind == "file":
            if not Path(spec.weights).is_file():
                raise OvlabelError(f"{family} weights file '{spec.weights}' does not exist")
            out[family] = file_sha256(spec.weights)
    return out


def classify_params(cfg: ClassifyConfig) -> dict:
    """Stage 1.2's classifier settings that change its masks: :meth:`ClassifyConfig.result_params`, with a
    mask-prompt checkpoint named by its weights' digest and epoch, not its folder (a moved checkpoint keeps
    the run's key)."""
    d = cfg.result_params()
    if cfg.mpt and cfg.needs_crops:
        from ovlabel.models.clip_mpt import checkpoint_fingerprint

        d["mpt"] = checkpoint_fingerprint(cfg.mpt)
    return d


def run_settings(cfg: PseudoLabelConfig, vocab: Vocabulary, templates: Templates, model_names: dict,
                 weights: dict | None = None) -> tuple[dict, dict[str, str]]:
    """The settings that determine a run's outputs, and per stage the key of the settings that determine
    that stage's masks (its part folder). Stage 1.2 depends on Stage 1.1's CLIP pass (detected classes,
    feature map), hence on the detection parameters too. ``weights``: digests of weights given as files
    (:func:`weight_digests`)."""
    vocab_json = vocab.to_json() | {"source": portable_name(vocab.source)}
    templates_json = templates.to_json() | {"name": portable_name(templates.name)}
    base = {"vocabulary": vocab_json, "templates": templates_json, "models": model_names}
    if weights:
        base["weights_sha256"] = weights
    detect = cfg.detect.result_params()
    settings = {"stages": list(cfg.stages), **base, "detect": detect}
    keys = {}
    if "1.1" in cfg.stages:  # = the whole-run key of a Stage 1.1 run: parts of 0.1 runs stay valid
        keys["1.1"] = settings_key({"stages": ["1.1"], **base, "detect": detect})
    if "1.2" in cfg.stages:
        settings["automask"] = cfg.automask.result_params()
        settings["classify"] = classify_params(cfg.classify)
        settings["merge"] = asdict(cfg.merge)
        presence = {k: v for k, v in detect.items() if k not in ("points_per_class", "multimask")}
        keys["1.2"] = settings_key({
            "stage": "1.2", **base, "detect": presence, "automask": settings["automask"],
            "classify": settings["classify"],
        })
    return settings, keys


class Stage1Worker(Worker):
    """CLIP, SAM and the class text features on one device, running :class:`ovlabel.stages.stage1.Stage1`."""

    def __init__(self, stage: "Stage1Stage", device: str, models: dict | None = None):
        from ovlabel.device import resolve_device, resolve_precision
        from ovlabel.models.registry import load_model
        from ovlabel.stages.stage1 import Stage1
        from ovlabel.text import class_text_features

        cfg = stage.cfg
        self.device = resolve_device(device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if models:
            clip, sam = models["clip"], models["sam"]
        else:
            clip = load_model(stage.specs["clip"], self.device, self.precision)
            sam = load_model(stage.specs["sam"], self.device, self.precision, sdpa=cfg.sdpa, compile=cfg.compile)
        text = class_text_features(clip, stage.vocab, stage.templates)
        crop_text = None
        if "1.2" in cfg.stages and cfg.classify.needs_crops:
            crop_text = class_text_features(clip, stage.vocab, load_templates(cfg.classify.templates))
        mpt = None
        if crop_text is not None and cfg.classify.mpt:  # OVSeg §3.3 mask prompts (ovlabel.models.clip_mpt)
            from ovlabel.models.clip_mpt import load_prompts

            mpt = load_prompts(cfg.classify.mpt, clip)
        self.stage1 = Stage1(clip, sam, text, cfg.detect, cfg.automask, cfg.classify, crop_text, mpt)

    def process(self, images, works) -> list[Output]:
        import torch

        with torch.inference_mode():
            results = self.stage1.process(images, [set(w.needs) for w in works], [w.item.classes for w in works])
        return [Output(r.masks, img.shape[:2]) for r, img in zip(results, images)]

    def identities(self) -> dict:
        return {"clip": self.stage1.clip.identity, "sam": self.stage1.sam.identity}

    def stats(self):
        return self.stage1.clip.stats + self.stage1.sam.stats


class Stage1Stage(Stage):
    """FMbSeg Stage 1.1 and/or 1.2 (``cfg.stages``) on a work list."""

    def __init__(self, cfg: PseudoLabelConfig, models: dict | None = None, command: str = "pseudo-label",
                 rebuild_stages: tuple[str, ...] = ()):
        from ovlabel.device import resolve_device, resolve_precision
        from ovlabel.models.offline import require_weights
        from ovlabel.models.registry import resolve_models

        self.cfg = cfg
        self.vocab = load_vocabulary(cfg.vocab)
        self.templates = load_templates(cfg.templates)
        if "1.2" in cfg.stages and cfg.classify.needs_crops:
            load_templates(cfg.classify.templates)  # a bad --crop-templates fails now, not after the first batch
        self.specs = resolve_models(cfg.models, {"clip": cfg.clip, "sam": cfg.sam})
        resolve_precision(cfg.precision, resolve_device(cfg.device))  # a bad --device fails before any work
        if not models:  # every missing weight named now, before the run directory is touched
            require_weights(self.specs, command)
        if models:
            names = {f: m.identity["spec"] for f, m in models.items()}
        else:
            names = {f: s.name for f, s in self.specs.items()}
        settings, keys = run_settings(cfg, self.vocab, self.templates, names, {} if models else weight_digests(self.specs))
        super().__init__(
            command=command, class_names=self.vocab.names, settings=settings, keys=keys,
            description=f"ovlabel pseudo-labels (stages {', '.join(settings['stages'])}), "
                        f"vocabulary {settings['vocabulary']['source']}",
            parameters=asdict(cfg), paint=cfg.merge.paint, rebuild_stages=rebuild_stages, batch_size=cfg.image_batch,
            device=cfg.device, precision=cfg.precision, overwrite=cfg.overwrite, overlays=cfg.overlays,
            progress=cfg.progress, **cfg.execution(),
        )

    def worker(self, device: str) -> Stage1Worker:
        return Stage1Worker(self, device)

    def use_captions(self, inputs) -> None:
        """Restrict each image to the classes its captions name (``cfg.captions``): crops vote only among
        them, so both stages label with them only, and each image's parts are keyed on its class list."""
        info = restrict_to_captions(inputs, self.cfg.captions, self.vocab, self.cfg.captions_missing)
        self.extra["captions"] = info
        self.settings["captions"] = {"file": portable_name(info["file"]), "missing": self.cfg.captions_missing}

    def part_ids(self, item, sha256):
        if item.classes is None:  # no captions: the image's content alone (the keys of every earlier run)
            return {s: sha256 for s in self.keys}
        pid = digest(sha256, ",".join(map(str, item.classes)))
        return {s: pid for s in self.keys}

    def merge(self, parts, sha256):
        return merge_stages(parts, sha256, self.cfg.merge)

    def merged_count(self, counts):
        return merged_count(counts, self.cfg.merge)

    def refusal_hint(self, before: dict, out: Path) -> str:
        if before.get("1.1") and before.get("1.1") == self.keys.get("1.1") and "1.2" in self.keys:
            return f"; to add or redo Stage 1.2 and keep its Stage 1.1 masks, run `ovlabel classify-masks {out}`"
        return ""


def label(inputs: str | Path, out: str | Path, cfg: PseudoLabelConfig, models: dict | None = None,
          command: str = "pseudo-label", rebuild_stages: tuple[str, ...] = ()) -> RunSummary:
    """Label every image under ``inputs`` (folder, list file or image) into the run directory ``out``.

    ``models`` may inject ready model objects ``{"clip": ..., "sam": ...}`` (tests, notebooks); by default
    they are built from ``cfg``. Raises :class:`OvlabelError` for bad input; a bad image is recorded in the
    manifest and skipped.
    """
    out = Path(out).expanduser().resolve()
    stage = Stage1Stage(cfg, models, command, rebuild_stages)
    stage.inputs = from_images(inputs, exclude=out)
    if cfg.captions:
        stage.use_captions(stage.inputs)
    return execute(stage, out, (lambda: Stage1Worker(stage, cfg.device, models)) if models else None)


def config_from_run(doc: dict) -> PseudoLabelConfig:
    """The :class:`PseudoLabelConfig` a run was last made with, from its ``run.json``."""
    params = (doc.get("last_invocation") or {}).get("parameters")
    if not params:
        raise OvlabelError("run.json has no recorded parameters (the run never completed once); rerun pseudo-label")
    fields = {k: params[k] for k in ("vocab", "templates", "models", "clip", "sam", "device", "precision",
                                    "image_batch", "overlays", "sdpa", "compile", "captions", "captions_missing")
              if k in params}
    cfg = PseudoLabelConfig(**fields, detect=DetectConfig(**params["detect"]),
                            stages=tuple(params.get("stages", ["1.1"])))
    for name, klass in (("automask", AutoMaskConfig), ("classify", ClassifyConfig), ("merge", MergeConfig)):
        if name in params:
            cfg = replace(cfg, **{name: klass(**params[name])})
    return cfg


def classify_masks(run_dir: str | Path, given: dict | None = None, images: str | Path | None = None,
                   models: dict | None = None) -> RunSummary:
    """Add Stage 1.2 to the run in ``run_dir`` (or redo it, or re-merge the stages).

    The run's own ``run.json`` says how it was made; the same settings are rebuilt from it, so Stage 1.1's
    parts keep their key and are reused, and only Stage 1.2 is computed (per image one CLIP crop pass and
    one SAM embedding). ``given``: settings to change, as a nested dict of :class:`PseudoLabelConfig` field
    names (``{"classify": {"classifier": "ensemble"}, "merge": {"paint": "small-on-top"}, "device": "cpu"}``);
    everything else keeps the run's own value (Stage 1.2's defaults if it has none yet). ``images``: where
    the run's images are now, if they moved. Raises :class:`OvlabelError` when ``run_dir`` is not a run or
    its images or models cannot be found.
    """
    from ovlabel.artifacts import RunLayout
    from ovlabel.config.files import build

    layout = RunLayout(Path(run_dir).expanduser())
    doc = layout.read_run_json()
    if doc is None:
        raise OvlabelError(f"'{run_dir}' is not an ovlabel run (no run.json); make one with `ovlabel pseudo-label`")
    cfg = build(PseudoLabelConfig, dict(given or {}), base=config_from_run(doc))
    cfg = replace(cfg, stages=(*cfg.stages, "1.2"))
    inputs = Path(images) if images is not None else recorded_path(doc["input"]["path"])
    if not inputs.exists():
        raise OvlabelError(f"the run's images are no longer at '{inputs}'; pass --images with their current location")
    return label(inputs, layout.root, cfg, models=models, command="classify-masks", rebuild_stages=("1.2",))
