"""The common core of every export: a run read as a stream of images, class selection, the seeded split,
output names, and image files placed by copy or link.

Nothing here loads a model or imports torch: an export reads only the run's artifacts (run.json,
manifest.parquet, masks.parquet, labels/*.png). Memory stays flat in the number of images: the manifest
rows (a few small fields per image) are held, but masks are read from masks.parquet one batch at a time
and grouped per image, and a label map is decoded only while its image is being written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ovlabel.artifacts import IGNORE_INDEX, RunLayout, label_names, open_complete_run, read_label_png, read_manifest
from ovlabel.config.export import ExportConfig
from ovlabel.errors import OvlabelError
from ovlabel.io.names import image_path, recorded_path
from ovlabel.masks import MaskSet, _to_bytes_rle

SPLITS = ("train", "val")
_MASK_COLUMNS = ["image_id", "mask_id", "source", "class_index", "score", "rle_size", "rle_counts", "bbox_xyxy", "area"]


@dataclass(frozen=True)
class ClassMap:
    """Run classes -> exported classes. ``names``: the exported class names (index = position);
    ``lut``: uint8 ``(256,)``, run class index -> exported index, or 255 for a class left out (255 -> 255)."""

    names: tuple[str, ...]
    lut: np.ndarray = field(compare=False)

    @classmethod
    def build(cls, run_names: list[str], classes=(), rename=()) -> "ClassMap":
        """Select ``classes`` (run class names, in that order; empty = all, in vocabulary order), then apply
        ``rename`` ``(old, new)`` pairs; two classes renamed to one name become one exported class.
        OvlabelError naming an unknown class and listing the run's classes."""
        accepted = ", ".join(run_names)
        for c in classes:
            if c not in run_names:
                raise OvlabelError(f"--classes: '{c}' is not a class of this run; its classes are: {accepted}")
        selected = list(classes) or list(run_names)
        renames = dict(rename)
        for old in renames:
            if old not in selected:
                raise OvlabelError(f"--rename: '{old}' is not an exported class; exported classes: {', '.join(selected)}")
        names: list[str] = []
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for c in selected:
            new = renames.get(c, c)
            if new not in names:
                names.append(new)
            lut[run_names.index(c)] = names.index(new)
        if len(names) > IGNORE_INDEX:
            raise OvlabelError(f"at most {IGNORE_INDEX} exported classes fit in uint8 label maps; got {len(names)}")
        return cls(tuple(names), lut)


def split_of(sha256: str, seed: int, fraction: float) -> str:
    """``"train"`` or ``"val"`` for an image of content hash ``sha256``: ``u = SHA-256("ovlabel-split:
    {seed}:{sha256}")`` read as a fraction in [0, 1) (first 8 bytes, big-endian); train iff ``u <
    fraction``. Depends on nothing else, so adding images never moves an image to the other split."""
    digest = hashlib.sha256(f"ovlabel-split:{seed}:{sha256}".encode()).digest()
    return "train" if int.from_bytes(digest[:8], "big") / 2.0**64 < fraction else "val"


def output_stems(files: list[str]) -> dict[str, str]:
    """A flat, unique output stem (no ``/``, no suffix) per image path: the label-map name of
    :func:`ovlabel.artifacts.label_names` without ``.png`` (so ``a.jpg`` and ``a.png`` in one run keep
    their suffix: ``a.jpg``, ``a.png``), with ``/`` replaced by ``__`` (``sub/b.png`` -> ``sub__b``); a
    stem that still collides gets ``__<n>`` (n = its position in sorted order)."""
    labels = label_names(sorted(files))
    stems = {f: labels[f][: -len(".png")].replace("/", "__") for f in files}
    count: dict[str, int] = {}
    for s in stems.values():
        count[s] = count.get(s, 0) + 1
    out = {}
    for n, f in enumerate(sorted(files)):
        out[f] = stems[f] if count[stems[f]] == 1 else f"{stems[f]}__{n}"
    return out


@dataclass
class ExportItem:
    """One labelled image of the run, as every format sees it.

    ``stem``: its unique flat output name; ``image_name`` = stem + the original suffix; ``split``:
    ``train``/``val``; ``src``: the image file (under the image root); ``width``/``height``: pixels after
    EXIF orientation (the label map's size). :meth:`masks` and :meth:`label_map` are computed on first use
    and dropped by :meth:`release`.
    """

    image_id: int
    file: str
    sha256: str
    width: int
    height: int
    label_path: Path
    src: Path
    stem: str
    split: str
    classmap: ClassMap
    min_score: float | None
    _table: pa.Table | None = None
    _masks: tuple[MaskSet, np.ndarray] | None = None
    _label: np.ndarray | None = None

    @property
    def ext(self) -> str:
        return Path(self.file).suffix

    @property
    def image_name(self) -> str:
        return self.stem + self.ext

    def masks(self) -> tuple[MaskSet, np.ndarray]:
        """``(masks, mask_ids)``: the image's masks kept by the class selection and ``min_score``, in file
        order, with ``class_index`` already the exported index; ``mask_ids`` int64 ``(N,)`` their
        ``mask_id`` (= the run's COCO annotation id)."""
        if self._masks is None:
            ms, ids = _table_masks(self._table)
            keep = self.classmap.lut[ms.class_index] != IGNORE_INDEX
            if self.min_score is not None:
                keep &= ms.scores >= self.min_score
            ms, ids = ms.filter(keep), ids[keep]
            ms.class_index = self.classmap.lut[ms.class_index].astype(np.int32)
            self._masks = (ms, ids)
        return self._masks

    def label_map(self) -> np.ndarray:
        """uint8 ``(H, W)``: the run's label map in exported class indices (255 = unlabeled). With
        ``min_score``, a pixel keeps its class only where a mask of that class with score >= min_score
        covers it (ovlabel's choice: never a class the label map did not give)."""
        if self._label is None:
            try:
                lab = read_label_png(self.label_path)
            except OSError as exc:
                raise OvlabelError(f"label map '{self.label_path}' of image '{self.file}' cannot be read "
                                   f"({exc.strerror or exc}); the run is incomplete, re-run its command") from None
            if lab.shape != (self.height, self.width):
                raise OvlabelError(f"label map '{self.label_path}' is {lab.shape[1]}x{lab.shape[0]}, but the manifest "
                                   f"says {self.width}x{self.height}; the run is inconsistent, rebuild it")
            if self.min_score is not None:
                ms, _ = _table_masks(self._table)
                ms = ms.filter(ms.scores >= self.min_score)
                covered = np.zeros(lab.shape, bool)
                for cls, m in zip(ms.class_index, dense_masks(ms)):
                    covered |= m & (lab == cls)
                lab = np.where(covered, lab, IGNORE_INDEX).astype(np.uint8)
            self._label = self.classmap.lut[lab]
        return self._label

    def release(self) -> None:
        self._table, self._masks, self._label = None, None, None


def dense_masks(ms: MaskSet):
    """Yield each mask of ``ms`` as a bool ``(H, W)`` array, one at a time (memory: one mask)."""
    from pycocotools import mask as mask_utils

    for rle in ms.rles:
        yield mask_utils.decode(_to_bytes_rle(rle)).astype(bool)


def _table_masks(table: pa.Table | None) -> tuple[MaskSet, np.ndarray]:
    if table is None or not table.num_rows:
        return MaskSet.empty(), np.zeros(0, np.int64)
    d = table.to_pydict()
    rles = [{"size": s, "counts": c} for s, c in zip(d["rle_size"], d["rle_counts"])]
    ms = MaskSet(rles, d["class_index"], d["score"], list(d["source"]),
                 np.asarray(d["bbox_xyxy"], np.float32).reshape(-1, 4), d["area"])
    return ms, np.asarray(d["mask_id"], np.int64)


@dataclass
class ExportRun:
    """A complete run opened for export: ``items`` (its ok images in image-id order, without mask data),
    ``class_names`` (its vocabulary), ``classmap`` (to the exported classes), ``image_root``, ``failed`` (images the run could not label) and
    ``fingerprint`` (SHA-256 over run.json's settings key, manifest.parquet and masks.parquet)."""

    layout: RunLayout
    doc: dict
    class_names: list[str]
    classmap: ClassMap
    image_root: Path
    items: list[ExportItem]
    failed: int
    fingerprint: str

    def stream(self):
        """Yield :attr:`items` in order, each with its masks attached (read from masks.parquet in batches,
        grouped by image id); call ``item.release()`` when done with one."""
        groups = _mask_groups(self.layout.masks)
        pending = next(groups, None)
        for item in self.items:
            while pending is not None and pending[0] < item.image_id:
                pending = next(groups, None)  # masks of an image that is not ok: not exported
            if pending is not None and pending[0] == item.image_id:
                item._table = pending[1]
                pending = next(groups, None)
            yield item


def _mask_groups(path: Path):
    """``(image_id, pa.Table)`` per image from masks.parquet, read in batches; the file is written in
    image-id order (:func:`ovlabel.dataset.write_masks_and_coco`), which this checks."""
    pf = pq.ParquetFile(path)
    cols = [c for c in _MASK_COLUMNS if c in pf.schema_arrow.names]
    cur_id, parts, last = None, [], -1
    for batch in pf.iter_batches(batch_size=4096, columns=cols):
        ids = batch.column("image_id").to_numpy()
        if not len(ids):
            continue
        if ids[0] < last or (np.diff(ids) < 0).any():
            raise OvlabelError(f"'{path}' is not in image_id order; rebuild the run with the command that made it")
        last = int(ids[-1])
        cuts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist(), len(ids)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            iid = int(ids[a])
            if iid != cur_id and cur_id is not None:
                yield cur_id, pa.Table.from_batches(parts)
                parts = []
            cur_id = iid
            parts.append(batch.slice(a, b - a))
    if cur_id is not None:
        yield cur_id, pa.Table.from_batches(parts)


def open_run(run_dir: str | os.PathLike, cfg: ExportConfig) -> ExportRun:
    """Open the complete run ``run_dir`` for export with ``cfg``. OvlabelError (naming the path) for a
    folder that is not a run, a run that is not complete, or a run with no labelled image."""
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise OvlabelError(f"run '{run_dir}' is not a folder; give a run directory made by `ovlabel pseudo-label`")
    layout, doc, names = open_complete_run(run_dir, masks=True)
    rows = sorted(read_manifest(layout.manifest), key=lambda r: r["image_id"])
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise OvlabelError(f"run '{run_dir}' has no labelled image ({len(rows)} failed or skipped); nothing to export")
    image_root = _image_root(doc, cfg, run_dir)
    classmap = ClassMap.build(names, cfg.classes, cfg.rename)
    stems = output_stems([r["file"] for r in ok])
    items = [
        ExportItem(r["image_id"], r["file"], r["sha256"], r["width"], r["height"], layout.root / r["label_file"],
                   image_path(image_root, r["file"]), stems[r["file"]], split_of(r["sha256"], cfg.seed, cfg.split),
                   classmap, cfg.min_score)
        for r in ok
    ]
    fp = hashlib.sha256(str(doc.get("settings_key")).encode())
    for p in (layout.manifest, layout.masks):
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                fp.update(chunk)
    return ExportRun(layout, doc, names, classmap, image_root, items, len(rows) - len(ok), fp.hexdigest())


def _image_root(doc: dict, cfg: ExportConfig, run_dir) -> Path:
    if cfg.image_root is not None:
        root = Path(cfg.image_root).expanduser()
        if not root.is_dir():
            raise OvlabelError(f"--image-root '{cfg.image_root}' is not a folder; give the folder the run's image "
                               f"paths (manifest 'file') are relative to")
        return root.resolve()
    recorded = (doc.get("input") or {}).get("root")
    if not recorded:
        raise OvlabelError(f"run '{run_dir}' does not record its image folder (run.json input.root); pass --image-root")
    return recorded_path(recorded)


def check_images(run: ExportRun, mode: str) -> None:
    """Before writing anything: every image must exist under the image root when ``mode`` copies or links
    them. OvlabelError naming the first missing file, how many are missing, and the fixes."""
    if mode == "none":
        return
    missing = [it.src for it in run.items if not it.src.is_file()]
    if missing:
        raise OvlabelError(
            f"{len(missing)} of {len(run.items)} images of run '{run.layout.root}' are missing under the image folder "
            f"'{run.image_root}' (first: '{missing[0]}'); did the images move? pass --image-root NEW_FOLDER, "
            f"or --images none to export labels only"
        )


def read_image(item: ExportItem) -> bytes:
    """The bytes of ``item``'s image, checked against the manifest's SHA-256. OvlabelError when the file is
    gone or changed since the run."""
    try:
        data = item.src.read_bytes()
    except OSError as exc:
        raise OvlabelError(f"image '{item.src}' cannot be read ({exc.strerror or exc}); did the images move? "
                           f"pass --image-root NEW_FOLDER") from None
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise OvlabelError(f"image '{item.src}' changed since the run labelled it (SHA-256 differs from the "
                           f"manifest); re-run the run's command first, or export with --images link/none")
    return data


def place_image(item: ExportItem, dest: Path, mode: str) -> None:
    """Put ``item``'s image at ``dest``: ``copy`` writes its bytes atomically (:func:`read_image` checks
    them); ``link`` makes an absolute symlink to it (its existence is checked, not its content)."""
    from ovlabel.io.atomic import atomic_symlink, write_bytes

    if mode == "link":
        if not item.src.is_file():
            raise OvlabelError(f"image '{item.src}' is missing; did the images move? pass --image-root NEW_FOLDER")
        atomic_symlink(dest, item.src.resolve())
    else:
        write_bytes(dest, read_image(item))
