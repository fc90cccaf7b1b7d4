"""``classify-masks``: add Stage 1.2 to an existing run (or re-merge its stages with new parameters).

The run's own ``run.json`` says how it was made (input, vocabulary, templates, models, detection
parameters); the same settings are rebuilt from it, so Stage 1.1's parts keep their key and are reused as
they are, and only Stage 1.2 is computed: per image one CLIP crop pass (the detected classes and the
feature map Stage 1.2 needs are not stored) and one SAM image embedding. The run's masks.parquet,
coco.json and label maps are then rebuilt atomically from the parts, like at the end of ``pseudo-label``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ovlabel.artifacts import RunLayout
from ovlabel.config import AutoMaskConfig, ClassifyConfig, DetectConfig, MergeConfig, PseudoLabelConfig
from ovlabel.errors import OvlabelError
from ovlabel.pipeline import RunSummary, run


def config_from_run(doc: dict) -> PseudoLabelConfig:
    """The :class:`PseudoLabelConfig` a run was last made with, from its ``run.json``."""
    params = (doc.get("last_invocation") or {}).get("parameters")
    if not params:
        raise OvlabelError("run.json has no recorded parameters (the run never completed once); rerun pseudo-label")
    fields = {k: params[k] for k in ("vocab", "templates", "models", "clip", "sam", "device", "precision",
                                    "image_batch", "overlays") if k in params}
    cfg = PseudoLabelConfig(**fields, detect=DetectConfig(**params["detect"]),
                            stages=tuple(params.get("stages", ["1.1"])))
    for name, klass in (("automask", AutoMaskConfig), ("classify", ClassifyConfig), ("merge", MergeConfig)):
        if name in params:
            cfg = replace(cfg, **{name: klass(**params[name])})
    return cfg


def classify_masks(
    run_dir: str | Path,
    automask: AutoMaskConfig | dict | None = None,
    classify: ClassifyConfig | dict | None = None,
    merge: MergeConfig | dict | None = None,
    images: str | Path | None = None,
    models: dict | None = None,
    **overrides,
) -> RunSummary:
    """Add Stage 1.2 to the run in ``run_dir`` (or redo it, or re-merge the stages).

    ``automask``/``classify``/``merge``: a config, or a dict of fields to change in the run's own config
    (the defaults if the run has no Stage 1.2 yet); None keeps the run's own.
    ``images``: where the run's images are now, if they moved. ``overrides``: other
    :class:`PseudoLabelConfig` fields for this invocation (``device``, ``precision``, ``overwrite``,
    ``overlays``, ``progress``, ``image_batch``). Raises :class:`OvlabelError` when ``run_dir`` is not
    a run or its images or models cannot be found.
    """
    layout = RunLayout(Path(run_dir).expanduser())
    doc = layout.read_run_json()
    if doc is None:
        raise OvlabelError(f"'{run_dir}' is not an ovlabel run (no run.json); make one with `ovlabel pseudo-label`")
    cfg = config_from_run(doc)
    changes = {}
    for name, value in (("automask", automask), ("classify", classify), ("merge", merge)):
        if isinstance(value, dict):
            changes[name] = replace(getattr(cfg, name), **value)
        elif value is not None:
            changes[name] = value
    cfg = replace(cfg, stages=(*cfg.stages, "1.2"), **changes, **{k: v for k, v in overrides.items() if v is not None})
    inputs = Path(images) if images is not None else Path(doc["input"]["path"])
    if not inputs.exists():
        raise OvlabelError(
            f"the run's images are no longer at '{inputs}'; pass --images with their current location"
        )
    return run(inputs, layout.root, cfg, models=models, command="classify-masks", rebuild_stages=("1.2",))
