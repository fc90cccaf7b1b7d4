"""What every file ovlabel writes records about how it was made: digests of settings, library versions,
timestamps. Shared by runs (:mod:`ovlabel.engine.provenance`) and checkpoints (``train-align``,
``train-mpt``)."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone

TINY_NOTE = "tiny/random-initialised models were used: these labels exercise the pipeline and are meaningless"


def settings_key(settings: dict) -> str:
    """The 16-hex-digit digest of a settings dict (part folders and ``settings_key`` are named by it)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def now() -> str:
    """UTC now, to the second, ISO 8601."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict:
    """Python and the versions of the libraries that shape the outputs."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "segment-anything", "pycocotools", "pyarrow", "numpy", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def jsonable(obj):
    """``obj`` with every value JSON can't hold (paths, tuples of paths) as its string."""
    return json.loads(json.dumps(obj, default=str))
