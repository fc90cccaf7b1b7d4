"""ovlabel: annotation-free semantic-segmentation labels from frozen foundation models.

The package imports nothing heavy at top level: ``ovlabel --help`` must not import torch. The Python API
(:mod:`ovlabel.api`: ``ovlabel.label``, ``ovlabel.segment``, ``ovlabel.open_run``, ...) loads on first use.
"""

__version__ = "0.1.0"

_API = ("Run", "classify_masks", "label", "open_run", "refine", "salience", "segment", "train_align")


def __getattr__(name: str):
    if name in _API:
        from ovlabel import api

        return getattr(api, name)
    raise AttributeError(f"module 'ovlabel' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
