"""What every format writer shares: its output folder (made, resumed or refused), the per-image "already
written" test that makes an export resumable, and the optional-dependency check.

A format writes into ``OUT/<format>/``. The folder carries ``.ovlabel-export.json`` with the export's key
(a hash of the format, the settings that change bytes, and the run's fingerprint) and a status. The same
key resumes: per-image files already on disk are kept (each was written atomically, so it is whole), the
rest is written, and the files that describe the whole dataset are rewritten at the end. Another key is
refused unless ``--overwrite``, which empties the folder first. A non-empty folder without the marker is
never touched.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path

from ovlabel.config.export import ExportConfig
from ovlabel.errors import OvlabelError
from ovlabel.export.core import ExportItem, ExportRun, place_image
from ovlabel.io.atomic import write_json

MARKER = ".ovlabel-export.json"


def require(module: str, fmt: str, package: str):
    """Import an optional dependency of format ``fmt``; OvlabelError naming the package and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OvlabelError(f"--format {fmt} needs the '{package}' package: pip install 'ovlabel[export]' "
                           f"(or pip install {package})") from None


class FormatWriter:
    """Base of the format writers. Subclasses set :attr:`name` and implement :meth:`outputs` (the files
    one image produces), :meth:`write` (produce them) and :meth:`finish` (the dataset-level files)."""

    name = ""

    def __init__(self, out: Path, run: ExportRun, cfg: ExportConfig):
        self.root = Path(out) / self.name
        self.run, self.cfg = run, cfg
        self.class_names = list(run.classmap.names)
        self.written = self.skipped = 0

    # -- per image -------------------------------------------------------------------------------------
    def outputs(self, item: ExportItem) -> list[Path]:
        raise NotImplementedError

    def done(self, item: ExportItem) -> bool:
        return all(p.exists() or p.is_symlink() for p in self.outputs(item))

    def write(self, item: ExportItem) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`write` keeps open (called after :meth:`finish`, or after an error)."""

    def put_image(self, item: ExportItem, dest: Path) -> None:
        """Copy or link ``item``'s image to ``dest`` per ``--images`` (nothing for ``none``)."""
        if self.cfg.images != "none":
            place_image(item, dest, self.cfg.images)

    # -- the folder ------------------------------------------------------------------------------------
    def key(self) -> str:
        doc = {"format": self.name, "settings": self.cfg.result_params(), "run": self.run.fingerprint,
               "classes": self.class_names}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def prepare(self) -> str:
        """Make, resume or replace the output folder; returns ``new``, ``resumed`` or ``replaced``."""
        marker = self.root / MARKER
        state = "new"
        if self.root.exists():
            if not self.root.is_dir():
                raise OvlabelError(f"'{self.root}' exists and is not a folder; choose another --out")
            if marker.exists():
                prev = json.loads(marker.read_text(encoding="utf-8"))
                if prev.get("key") == self.key():
                    state = "resumed"
                elif self.cfg.overwrite:
                    shutil.rmtree(self.root)
                    state = "replaced"
                else:
                    raise OvlabelError(
                        f"'{self.root}' holds a {self.name} export made with other settings or from another state of "
                        f"the run; pass --overwrite to replace it, or choose another --out")
            elif any(self.root.iterdir()):
                raise OvlabelError(f"'{self.root}' is not empty and is not an ovlabel export; choose another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self._mark("running")
        return state

    def complete(self) -> None:
        self._mark("complete")

    def _mark(self, status: str) -> None:
        write_json(self.root / MARKER, {"format": self.name, "key": self.key(), "status": status,
                                        "settings": self.cfg.result_params(), "classes": self.class_names})


def lines(values) -> str:
    """Text with one value per line (``\\n`` after each, none for no values)."""
    return "".join(f"{v}\n" for v in values)


def png_bytes(array) -> bytes:
    """PNG bytes of a uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB) array; deterministic."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
