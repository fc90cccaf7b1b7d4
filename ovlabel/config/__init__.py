"""Stage configurations: plain dataclasses, importable without torch (the CLI reads their defaults).

One module per group of commands; everything is importable from ``ovlabel.config``.
"""

from ovlabel.config._checks import _check
from ovlabel.config.export import FORMATS, IMAGE_MODES, ExportConfig
from ovlabel.config.refine import GT_LAYOUTS, CRFConfig, EvalConfig, RefineConfig, default_workers
from ovlabel.config.stage1 import (
    CLASSIFIERS,
    PAINT_POLICIES,
    STAGES,
    AutoMaskConfig,
    ClassifyConfig,
    DetectConfig,
    MergeConfig,
    PseudoLabelConfig,
    parse_stages,
)
from ovlabel.config.stage2 import SegmentConfig, TrainAlignConfig

__all__ = [
    "CLASSIFIERS", "FORMATS", "GT_LAYOUTS", "IMAGE_MODES", "PAINT_POLICIES", "STAGES", "AutoMaskConfig", "CRFConfig", "ClassifyConfig",
    "DetectConfig", "EvalConfig", "ExportConfig", "MergeConfig", "PseudoLabelConfig", "RefineConfig", "SegmentConfig",
    "TrainAlignConfig", "_check", "default_workers", "parse_stages",
]
