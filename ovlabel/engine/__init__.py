"""The run engine: one place where a labelling run lives.

- :mod:`~ovlabel.engine.inputs`: the work list (images, or the rows of a parent run) and output checks
- :mod:`~ovlabel.engine.stage`: what a stage tells the engine (:class:`Stage`, :class:`Worker`)
- :mod:`~ovlabel.engine.store`: the per-stage part store and the label-map paint record
- :mod:`~ovlabel.engine.executors`: where workers run (inline, worker processes, Ray)
- :mod:`~ovlabel.engine.run`: :func:`execute`: lock, resume, change report, progress, failures
- :mod:`~ovlabel.engine.rebuild`: the one rebuild of manifest, masks.parquet, coco.json, label maps, overlays
- :mod:`~ovlabel.engine.provenance`: ``run.json``
- :mod:`~ovlabel.engine.summary`: :class:`RunSummary`

Importing this package does not import torch.
"""

from ovlabel.engine.inputs import (
    Inputs,
    Item,
    check_output_dir,
    from_images,
    from_run,
    is_run,
    restrict_to_captions,
)
from ovlabel.engine.provenance import settings_key
from ovlabel.engine.run import execute
from ovlabel.engine.stage import Output, Stage, Work, Worker
from ovlabel.engine.summary import RunSummary

__all__ = ["Inputs", "Item", "Output", "RunSummary", "Stage", "Work", "Worker", "check_output_dir", "execute",
           "from_images", "from_run", "is_run", "restrict_to_captions", "settings_key"]
