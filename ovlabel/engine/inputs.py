"""What a run labels: the work list of input images, from a folder/list/image or from a parent run.

Every item is one manifest row to be: its ``image_id`` (1-based, manifest order), its ``file`` relative to
the image root, where its label map goes, and what is known before reading it (the content hash and
failure of a parent run's row, the classes it may take). Also here: the checks that keep a run's output
away from its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ovlabel.artifacts import RunLayout, label_names, open_complete_run, read_manifest
from ovlabel.errors import OvlabelError
from ovlabel.io.lock import ignorable
from ovlabel.io.names import image_path, recorded_path, stored_name


@dataclass
class Item:
    """One input image of a run.

    - ``file``: POSIX path relative to the image root (the manifest's ``file``); ``path``: where it is now.
    - ``label_file``: its label map, relative to the run directory (``labels/<name>.png``).
    - ``sha256``: the content hash it must have (an image of a parent run), or None (read it to know).
    - ``classes``: vocabulary indices the image may take (None = the whole vocabulary).
    - ``reason``: why it failed or is skipped before any work (a folder that cannot be searched, not a
      regular file, failed in the parent run), else None; ``status``: the manifest status it then gets
      (``failed`` or ``skipped``).
    - ``parent``: stage-specific inputs from a parent run (``refine``: its label map and soft map paths).
    """

    image_id: int
    file: str
    path: Path
    label_file: str
    sha256: str | None = None
    classes: tuple[int, ...] | None = None
    reason: str | None = None
    parent: dict = field(default_factory=dict)
    status: str = "failed"


@dataclass
class Inputs:
    """A resolved input: the items in manifest order, the image ``root``, what ``run.json`` records as
    ``input``, and for a parent run its layout, ``run.json`` and manifest rows."""

    items: list[Item]
    root: Path
    info: dict
    parent_layout: RunLayout | None = None
    parent_doc: dict | None = None
    parent_rows: list[dict] | None = None

    @property
    def kind(self) -> str:
        return self.info["kind"]


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (``run.json`` and ``manifest.parquet``)."""
    return path.is_dir() and (path / "run.json").is_file() and (path / "manifest.parquet").is_file()


def from_images(inputs: str | Path, exclude: Path | None = None) -> Inputs:
    """Items for every image under ``inputs`` (a folder searched recursively, a list file or one image);
    ``exclude`` (the run's own folder) is never searched. Raises OvlabelError when there are none."""
    from ovlabel.io.images import discover_images

    source = discover_images(inputs, exclude=exclude)
    names = label_names([e.rel for e in source.entries])
    items = [Item(i, e.rel, e.path, f"labels/{names[e.rel]}", reason=e.reason, status=e.status)
             for i, e in enumerate(source.entries, start=1)]
    info = {"path": stored_name(str(Path(inputs).expanduser().resolve())), "kind": source.kind,
            "root": stored_name(str(source.root))}
    if source.not_searched:
        info["not_searched"] = dict(sorted(source.not_searched.items()))
    return Inputs(items, source.root, info)


def from_run(run_dir: str | Path, images: str | Path | None = None) -> Inputs:
    """Items for every row of the complete run ``run_dir``, with their content hashes and the run's failures
    (``reason`` "failed in the parent run: ..."); ``images`` replaces the image root the run recorded (the
    images moved). Raises OvlabelError when ``run_dir`` is not a complete run."""
    layout, doc, _ = open_complete_run(run_dir)
    parent = layout.root
    recorded = (doc.get("input") or {}).get("root")
    if not images and not recorded:
        raise OvlabelError(f"run '{parent}' does not record its image folder; pass --images")
    root = Path(images).expanduser().resolve() if images else recorded_path(recorded)
    try:
        rows = read_manifest(layout.manifest)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise OvlabelError(f"the manifest of run '{parent}' cannot be read ({type(exc).__name__}: {exc}); rerun "
                           f"the command that made the run to rebuild it") from None
    items = []
    for r in rows:
        label_file = r["label_file"] or f"labels/{label_names([r['file']])[r['file']]}"
        reason = None if r["status"] == "ok" else _parent_reason(r["status"], r["reason"])
        status = "skipped" if r["status"] == "skipped" else "failed"
        items.append(Item(r["image_id"], r["file"], image_path(root, r["file"]), label_file, r["sha256"],
                          reason=reason, status=status))
    info = {"path": stored_name(str(parent)), "kind": "run", "root": stored_name(str(root))}
    return Inputs(items, root, info, layout, doc, rows)


def restrict_to_captions(inputs: Inputs, captions: str | Path, vocab, missing: str) -> dict:
    """Set each item's ``classes`` to the vocabulary classes its captions name (OVSegmentor §3; images the
    captions name none of get the whole vocabulary with ``missing="all"``, none with ``"none"``:
    :func:`ovlabel.captions.captions_to_classes`). Returns the provenance for run.json: the file's name and
    SHA-256, the rule, and how many images each reason applied to."""
    from collections import Counter

    from ovlabel.captions import captions_to_classes

    found = captions_to_classes(captions, vocab, [i.file for i in inputs.items], missing)
    for item in inputs.items:
        item.classes = tuple(found[item.file])
    return found.info | {"images_by_reason": dict(sorted(Counter(found.reasons.values()).items()))}


def _parent_reason(status: str, reason: str | None) -> str:
    """A parent run's failure (or skip) reason as this run's (once: a chain of runs does not repeat the
    prefix)."""
    prefix = f"{status} in the parent run: "
    return reason if (reason or "").startswith(prefix) else prefix + str(reason)


def ensure_writable(out: Path) -> None:
    """Create the run directory ``out`` (resolved) if needed and make sure a file can be created in it:
    a read-only file system, a folder without write permission or a full disk is reported now, as an
    :class:`~ovlabel.errors.OutputError` with exit status 2, before any work."""
    import errno
    import tempfile

    from ovlabel.errors import OutputError
    from ovlabel.io.atomic import write_fault

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(_first_missing(out) if exc.errno != errno.EEXIST else out, exc, doing="create",
                          exit_code=2) from None
    try:
        write_fault(".ovlabel-probe")  # the testing hook of ovlabel.io.atomic (a read-only disk, simulated)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".ovlabel-probe.", suffix=".tmp") as fh:
            fh.write(b"x")
            fh.flush()
    except OSError as exc:
        raise OutputError(out, exc, doing="write into", exit_code=2) from None


def _first_missing(out: Path) -> Path:
    """The outermost folder of ``out`` that does not exist (the one that could not be created)."""
    for p in reversed((out, *out.parents)):
        if not p.exists():
            return p
    return out


def check_output_dir(out: Path, inputs: Inputs) -> None:
    """Refuse an output folder that would clobber or feed back into the input: a file, a folder inside the
    input folder or the image folder, a folder inside (or holding) a parent run, or a non-empty folder that
    is not an ovlabel run. ``out`` is resolved."""
    if out.exists() and not out.is_dir():
        raise OvlabelError(f"--out '{out}' exists and is a file; give a folder")
    if inputs.parent_layout is not None:
        parent = inputs.parent_layout.root
        if out == parent or parent in out.parents:
            raise OvlabelError(f"--out '{out}' is inside the input run '{parent}'; a run never writes into its input")
        if out in parent.parents:
            raise OvlabelError(f"--out '{out}' contains the input run '{parent}'; choose a separate folder")
        if out == inputs.root or inputs.root in out.parents:
            raise OvlabelError(f"--out '{out}' is inside the image folder '{inputs.root}'; choose a folder outside it")
    elif inputs.kind == "folder" and (out == inputs.root or inputs.root in out.parents):
        raise OvlabelError(
            f"--out '{out}' is inside the input folder '{inputs.root}': its label maps and overlays would be "
            f"read as input images next time; choose an output folder outside the input"
        )
    if out.is_dir() and any(not ignorable(p.name) for p in out.iterdir()) and not RunLayout(out).run_json.exists():
        raise OvlabelError(
            f"--out '{out}' is a non-empty folder that is not an ovlabel run (no run.json); choose a new or empty folder"
        )
