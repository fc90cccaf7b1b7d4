"""``segment``: label new images with a trained alignment checkpoint and any class names (FMbSeg §3.3,
"Deployment"), as a stage of the run engine.

The algorithm is :class:`ovlabel.stages.segment.AlignedSegmenter`; here: its settings (the checkpoint's
weights digest, not its folder, so a moved checkpoint still resumes), its models, and one part folder
``segment`` whose parts hold one mask per predicted class per image.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from ovlabel.config import CRFConfig, SegmentConfig
from ovlabel.engine import Output, Stage, Worker, execute, from_images
from ovlabel.engine.summary import RunSummary
from ovlabel.errors import OvlabelError

SOURCE_SEGMENT = "segment"


def _warn_if_other_weights(loaded: dict, trained: dict) -> None:
    if loaded.get("sha256") != trained.get("sha256") or loaded.get("arch") != trained.get("arch"):
        print(
            f"warning: {loaded.get('spec')} is not the model the checkpoint was trained with "
            f"({trained.get('spec')}, sha256 {str(trained.get('sha256'))[:12]}); the labels may be meaningless",
            file=sys.stderr,
        )


class SegmentWorker(Worker):
    """The checkpoint's vision and text encoders, its head and the class text features on one device."""

    def __init__(self, stage: "SegmentStage", device: str, models: dict | None = None):
        from ovlabel.device import resolve_device, resolve_precision
        from ovlabel.stages.encoders import load_stage2
        from ovlabel.stages.segment import AlignedSegmenter
        from ovlabel.text import class_text_features

        cfg, config = stage.cfg, stage.ckpt_config
        self.device = resolve_device(device)
        self.precision = resolve_precision(cfg.precision, self.device)
        vision = config["vision_encoder"].get("family", "dinov2")  # Stage 2 encoders: ovlabel.stages.encoders
        encoder, clip = load_stage2(stage.specs, vision, self.device, self.precision, models)
        from ovlabel.stages.segment_infer import queries

        _warn_if_other_weights(encoder.identity, config["vision_encoder"])
        _warn_if_other_weights(clip.identity, config["text_encoder"])
        inf = stage.inference
        prompted, owner = queries(stage.vocab, inf)
        text = class_text_features(clip, prompted, stage.templates).to(self.device)
        self.clip = clip
        self.segmenter = AlignedSegmenter(encoder, stage.module.to(self.device), text, config, inf.resolution,
                                          cfg.refine, self.precision, inf, owner)

    def process(self, images, works) -> list[Output]:
        import torch

        with torch.inference_mode():
            results = self.segmenter.process(images)
        return [Output(r.masks, img.shape[:2]) for r, img in zip(results, images)]

    def identities(self) -> dict:
        return {m.identity["family"]: m.identity for m in (self.segmenter.encoder, self.clip)}

    def stats(self):
        return self.segmenter.encoder.stats


class SegmentStage(Stage):
    """Segment a work list with a checkpoint and ``cfg.classes``."""

    def __init__(self, cfg: SegmentConfig, models: dict | None = None):
        from ovlabel.cache import file_sha256
        from ovlabel.device import resolve_device, resolve_precision
        from ovlabel.stages.align import WEIGHTS_FILE, load_checkpoint
        from ovlabel.stages.encoders import checkpoint_specs, model_names
        from ovlabel.stages.segment_infer import resolve
        from ovlabel.vocab import Templates, load_templates, load_vocabulary

        if not cfg.classes.strip():
            raise OvlabelError("no classes given: pass --classes as a comma list ('rocket,bridge'), a class file or a preset")
        self.cfg = cfg
        self.vocab = load_vocabulary(cfg.classes)
        self.module, config = load_checkpoint(cfg.checkpoint, "cpu")
        self.ckpt_config = config
        self.inference = resolve(cfg, self.vocab, config)
        if cfg.templates:
            self.templates = load_templates(cfg.templates)
        else:
            self.templates = Templates(name=config["templates"]["name"], templates=tuple(config["templates"]["templates"]))
        self.specs = checkpoint_specs(config, cfg.dinov2, cfg.clip)  # the families the checkpoint's head was trained on
        if not models:  # every missing weight named now, before the run directory is touched
            from ovlabel.models.offline import require_weights

            require_weights(self.specs, "segment")
        names = model_names(self.specs, models)
        resolve_precision(cfg.precision, resolve_device(cfg.device))  # a bad --device fails before any work
        weights = Path(cfg.checkpoint).expanduser().resolve() / WEIGHTS_FILE
        settings = {
            "stages": [SOURCE_SEGMENT],
            "vocabulary": self.vocab.to_json(),
            "templates": self.templates.to_json(),
            "models": names,
            # the weights' digest, not their folder: a moved checkpoint still resumes (the folder is recorded
            # in run.json's last_invocation.parameters)
            "checkpoint": {"sha256": file_sha256(weights), "epoch": config.get("epoch")},
            "segment": {
                "resolution": self.inference.resolution, "inference": self.inference.to_json(),
                "max_aspect": config["max_aspect"], "temperature": config["temperature"], "refine": cfg.refine,
                "crf": asdict(CRFConfig()) if cfg.refine else None,
            },
        }
        from ovlabel.engine import settings_key

        key = settings_key(settings)
        super().__init__(
            command="segment", class_names=self.vocab.names, settings=settings,
            keys={SOURCE_SEGMENT: key}, description=f"ovlabel pseudo-labels (stages segment), vocabulary "
                                                    f"{settings['vocabulary']['source']}",
            parameters=asdict(cfg), batch_size=cfg.image_batch, device=cfg.device, precision=cfg.precision,
            overwrite=cfg.overwrite, overlays=cfg.overlays, progress=cfg.progress, **cfg.execution(),
        )

    def worker(self, device: str) -> SegmentWorker:
        return SegmentWorker(self, device)


def segment(inputs: str | Path, out: str | Path, cfg: SegmentConfig, models: dict | None = None) -> RunSummary:
    """Segment every image under ``inputs`` into the run directory ``out`` with ``cfg.classes``.

    ``models`` may inject ready ``{"dinov2": ..., "clip": ...}``. Raises OvlabelError for bad input.
    """
    out = Path(out).expanduser().resolve()
    stage = SegmentStage(cfg, models)
    stage.inputs = from_images(inputs, exclude=out)
    return execute(stage, out, (lambda: SegmentWorker(stage, cfg.device, models)) if models else None)
