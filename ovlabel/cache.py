"""ovlabel's own on-disk cache: text embeddings and weight-file digests.

Location: ``$OVLABEL_CACHE`` if set, else ``$XDG_CACHE_HOME/ovlabel``, else ``~/.cache/ovlabel``.
Model weights are not stored here: they live in the standard caches of the libraries that download
them (``$HF_HOME`` for open_clip's Hugging Face downloads, ``$TORCH_HOME/hub/checkpoints`` for SAM).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ovlabel.io.atomic import atomic_path, write_json


def cache_dir() -> Path:
    """The ovlabel cache folder (not created)."""
    env = os.environ.get("OVLABEL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ovlabel"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a (large) weights file, remembered by (path, size, mtime) so a 2.5 GB
    checkpoint is hashed once, not on every run."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / "sha256.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    index[key] = digest
    try:
        write_json(index_path, index)
    except OSError:  # a read-only cache must not stop a run
        pass
    return digest


class TextEmbeddingCache:
    """Text embeddings on disk, one ``.npz`` per (model identity, template set), one entry per phrase.

    Each entry is the L2-normalised template-ensemble embedding of one phrase, float32 ``(D,)``. Files
    are replaced atomically, so concurrent runs at worst both compute a missing phrase.
    """

    def __init__(self, model_key: str, templates_key: str, root: Path | None = None):
        safe = hashlib.sha256(model_key.encode()).hexdigest()[:24]
        self.path = (root or cache_dir()) / "text" / safe / f"{templates_key}.npz"

    def load(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                phrases = [str(p) for p in data["phrases"]]
                vectors = data["vectors"]
        except (OSError, KeyError, ValueError):
            return {}
        return dict(zip(phrases, vectors))

    def save(self, table: dict[str, np.ndarray]) -> None:
        phrases = sorted(table)
        vectors = np.stack([table[p] for p in phrases]).astype(np.float32)
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, phrases=np.array(phrases, dtype=str), vectors=vectors)
        except OSError:
            pass
