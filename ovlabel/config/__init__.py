"""Stage configurations: plain dataclasses, importable without torch (the CLI reads their defaults).

One module per group of commands; everything is importable from ``ovlabel.config``.
"""

from ovlabel.config._checks import _check
from ovlabel.config.benchmark import BENCHMARK_PATHS, BenchmarkConfig
from ovlabel.config.export import FORMATS, IMAGE_MODES, ExportConfig
from ovlabel.config.mpt import MptConfig
from ovlabel.config.refine import GT_LAYOUTS, CRFConfig, EvalConfig, RefineConfig, default_workers
from ovlabel.config.run import EXECUTORS, ModelRunConfig, RunConfig
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
    "BENCHMARK_PATHS", "BenchmarkConfig", "CLASSIFIERS", "EXECUTORS", "FORMATS", "GT_LAYOUTS", "IMAGE_MODES",
    "ModelRunConfig", "RunConfig", "PAINT_POLICIES", "STAGES", "AutoMaskConfig", "CRFConfig", "ClassifyConfig",
    "DetectConfig", "EvalConfig", "ExportConfig", "MergeConfig", "MptConfig", "PseudoLabelConfig", "RefineConfig",
    "SegmentConfig",
    "TrainAlignConfig", "_check", "default_workers", "parse_stages",
]
