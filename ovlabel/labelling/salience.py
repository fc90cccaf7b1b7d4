"""``salience``: PnP-OVSS labels (seed 004) for a folder of images or an existing run, as a stage of the
run engine.

Input: images (folder, list file, one image) with a vocabulary (every class in every prompt), or a run
directory: its images, its vocabulary and, per image, the classes its Stage 1.1 detected (CLIP's crop
detection stands in for the GPT-4o step of seed 004 §3). An image's part is named by a digest of its
content hash and its class list, so a changed parent (other detected classes) redoes only the affected
images. ``keep_soft`` also keeps the blurred class probabilities (``RUN/soft/``) for ``refine``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ovlabel.engine import (
    Inputs,
    Output,
    Stage,
    Worker,
    execute,
    from_images,
    from_run,
    is_run,
    restrict_to_captions,
    settings_key,
)
from ovlabel.engine.store import digest
from ovlabel.engine.summary import RunSummary
from ovlabel.errors import OvlabelError
from ovlabel.masks import SOURCE_STAGE_1_1
from ovlabel.salience_config import SalienceRunConfig
from ovlabel.vocab import Vocabulary, load_vocabulary

SOURCE_SALIENCE = "salience"


def resolve_inputs(inputs, vocab: str | None, images: str | None = None,
                   exclude: Path | None = None) -> tuple[Inputs, Vocabulary, str]:
    """The work list, the vocabulary and where each image's classes come from (``classes_from``).

    From images: ``vocab`` is required and every image takes every class. From a run without ``vocab``:
    its vocabulary, and per image the classes of its Stage 1.1 masks (of all its masks when it has no
    Stage 1.1 masks, e.g. a ``refine`` or ``salience`` run). Raises OvlabelError when nothing says which
    classes to look for.
    """
    from ovlabel.artifacts import read_masks

    src = Path(inputs).expanduser().resolve()
    if not is_run(src):
        if vocab is None:
            raise OvlabelError(f"'{inputs}' is not a run directory: give the classes to look for with --vocab or "
                               f"--classes")
        voc = load_vocabulary(vocab)
        res = from_images(src, exclude=exclude)
        for item in res.items:
            item.classes = tuple(range(len(voc)))
        return res, voc, "vocabulary"
    res = from_run(src, images)
    doc = res.parent_doc
    res.info["parent"] = {"settings_key": doc.get("settings_key"), "command": doc.get("command")}
    if vocab is not None:
        voc = load_vocabulary(vocab)
        for item in res.items:
            item.classes = tuple(range(len(voc)))
        return res, voc, "vocabulary"
    voc = Vocabulary.from_json(doc["settings"]["vocabulary"])
    masks = read_masks(res.parent_layout.masks) if res.parent_layout.masks.exists() else {}
    has_11 = any(SOURCE_STAGE_1_1 in ms.source for ms in masks.values())
    for item in res.items:
        ms = masks.get(item.image_id)
        sel = [] if ms is None else [c for c, s in zip(ms.class_index, ms.source) if s == SOURCE_STAGE_1_1 or not has_11]
        item.classes = tuple(sorted({int(c) for c in sel}))
    return res, voc, "stage1.1 masks of the parent run" if has_11 else "masks of the parent run"


class SalienceWorker(Worker):
    """BLIP ITM and the salience extractor on one device."""

    def __init__(self, stage: "SalienceStage", device: str, model=None):
        from ovlabel.device import resolve_device, resolve_precision
        from ovlabel.models.registry import load_model
        from ovlabel.stages.salience import SalienceExtractor

        self.device = resolve_device(device)
        self.precision = resolve_precision(stage.cfg.precision, self.device)
        self.model = model or load_model(stage.spec, self.device, self.precision)
        self.extractor = SalienceExtractor(self.model, stage.cfg.salience)
        self.names = stage.class_names

    def process(self, images, works) -> list[Output]:
        import torch

        classes = [list(w.item.classes) for w in works]
        names = [[self.names[c] for c in cl] for cl in classes]
        with torch.inference_mode():
            results = self.extractor.label(images, names, classes)
        return [Output({SOURCE_SALIENCE: masks}, img.shape[:2], soft) for (masks, _, soft), img in zip(results, images)]

    def identities(self) -> dict:
        return {"blip": self.model.identity}

    def timings(self):
        return self.model.timings + self.extractor.timings


def blip_spec(cfg: SalienceRunConfig):
    """The BLIP model ``cfg`` names; raises OvlabelError for a bad model name, device or precision."""
    from ovlabel.device import resolve_device, resolve_precision
    from ovlabel.models.registry import resolve_models

    spec = resolve_models(cfg.models, {"blip": cfg.blip}, families=("blip",))["blip"]
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    return spec


def require_blip(spec) -> None:
    """Fail now, naming the BLIP weights, when they are neither cached nor downloadable."""
    from ovlabel.models.offline import require_weights

    require_weights({"blip": spec}, "salience")


class SalienceStage(Stage):
    """PnP-OVSS salience labels for a work list whose items carry their classes (``spec``: the BLIP model)."""

    def __init__(self, inputs: Inputs, vocab: Vocabulary, classes_from: str, cfg: SalienceRunConfig, spec,
                 model=None):
        self.cfg, self.spec = cfg, spec
        settings = {
            "stages": [SOURCE_SALIENCE], "vocabulary": vocab.to_json(), "classes_from": classes_from,
            "models": {"blip": model.identity["spec"] if model else self.spec.name}, "salience": cfg.salience.to_json(),
        }
        super().__init__(
            command="salience", inputs=inputs, class_names=vocab.names, settings=settings,
            keys={SOURCE_SALIENCE: settings_key(settings)},
            description=f"ovlabel PnP-OVSS salience labels (BLIP GradCAM + Salience DropOut), vocabulary {vocab.source}",
            parameters=asdict(cfg), batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision,
            overwrite=cfg.overwrite, overlays=cfg.overlays, progress=cfg.progress, keep_soft=cfg.keep_soft,
            **cfg.execution(),
        )

    def worker(self, device: str) -> SalienceWorker:
        return SalienceWorker(self, device)

    def part_ids(self, item, sha256):
        return {SOURCE_SALIENCE: digest(sha256, ",".join(map(str, item.classes)))}


def salience(inputs, out, cfg: SalienceRunConfig, model=None) -> RunSummary:
    """Label ``inputs`` (images or a run directory) with PnP-OVSS into the run directory ``out``.

    ``model`` may inject a ready :class:`ovlabel.models.blip.BlipModel`. Raises OvlabelError for bad input or
    options; an image that fails is recorded in the manifest and skipped.
    """
    out = Path(out).expanduser().resolve()
    spec = blip_spec(cfg)  # a bad option fails before the input is searched
    if model is None:
        require_blip(spec)
    res, vocab, classes_from = resolve_inputs(inputs, cfg.vocab, cfg.images, exclude=out)
    captions = None
    if cfg.captions:  # each image looks for the classes its captions name (OVSegmentor §3)
        captions = restrict_to_captions(res, cfg.captions, vocab, cfg.captions_missing)
        classes_from = f"captions ({captions['file']}, images without a class: {cfg.captions_missing})"
    stage = SalienceStage(res, vocab, classes_from, cfg, spec, model)
    if captions:
        stage.extra["captions"] = captions
    return execute(stage, out, (lambda: SalienceWorker(stage, cfg.device, model)) if model else None)
