"""``ovlabel show RUN``: overlays for an existing run."""

from __future__ import annotations

from pathlib import Path

from ovlabel.artifacts import RunLayout, read_manifest
from ovlabel.errors import OvlabelError
from ovlabel.io.lock import run_lock
from ovlabel.engine.rebuild import write_overlays


def show_run(run_dir: str | Path, image_root: str | Path | None = None) -> tuple[int, Path]:
    """Write ``RUN/overlays/<rel>.jpg`` for every labelled image; returns (count, overlays folder).

    Source images are read from the run's recorded image root, or from ``image_root`` if given. Holds the
    run's lock (:func:`ovlabel.io.lock.run_lock`): refused while another command writes the run.
    """
    layout = RunLayout(Path(run_dir).expanduser())
    doc = layout.read_run_json()
    if doc is None or not layout.manifest.exists():
        raise OvlabelError(f"'{run_dir}' is not a finished ovlabel run (no run.json / manifest.parquet)")
    root = Path(image_root).expanduser() if image_root else Path(doc["input"]["root"])
    if not root.is_dir():
        raise OvlabelError(f"image root '{root}' does not exist; pass --images with the folder the run was made from")
    names = doc["settings"]["vocabulary"]["classes"]
    with run_lock(layout.root, "show"):
        rows = [r for r in read_manifest(layout.manifest) if r["status"] == "ok"]
        return write_overlays(layout, root, rows, names), layout.overlays
