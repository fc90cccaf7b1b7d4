"""``ovlabel show RUN``: overlays for an existing run."""

from __future__ import annotations

from pathlib import Path

from ovlabel.artifacts import RunLayout, open_complete_run, read_manifest
from ovlabel.engine.rebuild import write_overlays
from ovlabel.errors import OvlabelError
from ovlabel.io.lock import run_lock
from ovlabel.io.names import recorded_path
from ovlabel.quality import least_certain


def show_run(run_dir: str | Path, image_root: str | Path | None = None, review: int | None = None) -> tuple[int, Path]:
    """Write ``RUN/overlays/<rel>.jpg`` for every labelled image (with ``review``: for the ``review`` least
    certain ones only, :func:`ovlabel.quality.least_certain`); returns (count, overlays folder).

    Source images are read from the run's recorded image root, or from ``image_root`` if given. Holds the
    run's lock (:func:`ovlabel.io.lock.run_lock`): refused while another command writes the run.
    """
    if review is not None and review < 0:
        raise OvlabelError(f"--review {review} is invalid: expected a number of images >= 0")
    layout, doc, names = open_complete_run(run_dir)
    root = Path(image_root).expanduser() if image_root else recorded_path(doc["input"]["root"])
    if not root.is_dir():
        raise OvlabelError(f"image root '{root}' does not exist; pass --images with the folder the run was made from")
    with run_lock(layout.root, "show"):
        rows = [r for r in read_manifest(layout.manifest) if r["status"] == "ok"]
        if review is not None:
            rows = least_certain(rows, review)
        return write_overlays(layout, root, rows, names), layout.overlays


def review_list(run_dir: str | Path, n: int) -> list[str]:
    """One line per image of the ``n`` least certain: estimated quality, file, overlay path."""
    layout = RunLayout(Path(run_dir).expanduser())
    out = []
    for r in least_certain(read_manifest(layout.manifest), n):
        q = r.get("quality")
        overlay = layout.overlays / Path(r["label_file"]).relative_to("labels").with_suffix(".jpg")
        out.append(f"  {'n/a' if q is None else f'{q:.3f}'}  {r['file']}  {overlay}")
    return out
