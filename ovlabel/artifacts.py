"""The run directory: the one place that defines artifact names and schemas (the contract between stages).

::

    RUN/
      manifest.parquet   one row per input image (MANIFEST_SCHEMA)
      masks.parquet      one row per mask (MASKS_SCHEMA), RLE-encoded
      coco.json          COCO instances, RLE segmentations, vocabulary as categories
      labels/<rel>.png   uint8 label map per image: class index, 255 = unlabeled
      classes.txt        the vocabulary, one class name per line: line i (0-based) is class index i
      id2label.json      the same as {"0": name, ...} (Hugging Face's convention)
      legend.png         colour legend: each class index and name beside the colour overlays paint it with
                         (these three: write_class_files, called by every rebuild)
      run.json           provenance: version, models and weight digests, parameters, vocabulary
      overlays/<rel>.jpg coloured overlays with a legend (optional)
      parts/<settings>/<sha256>.parquet
                         per-image results keyed by content hash: what makes runs resumable
      cache/             bookkeeping derived from the parts (which parts each label map was painted from);
                         safe to delete: the next run checks every label map against its parts
      soft/<rel>.npz     optional per-image class probabilities (SOFT_MAP_FORMAT), for stages that have them
      eval/<name>.json   evaluation reports written by ``ovlabel eval`` (and <name>.md)
      .lock              held by the one command writing the run (:mod:`ovlabel.io.lock`)

Class indices are 0-based positions in the vocabulary (the label-map value). COCO category ids are
``class_index + 1`` because COCO reserves id 0. Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ovlabel.io.atomic import atomic_path
from ovlabel.masks import MaskSet
from ovlabel.vocab import IGNORE_INDEX  # noqa: E402  (re-exported: the run directory's label-map convention)

#: Class files beside ``labels/`` (:func:`write_class_files`): names that make label PNGs self-describing.
CLASSES_TXT, ID2LABEL_JSON, LEGEND_PNG = "classes.txt", "id2label.json", "legend.png"

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("file", pa.string()),  # POSIX path relative to the image root
    ("sha256", pa.string()),  # content hash of the file bytes (null if unreadable)
    ("width", pa.int32()),  # after EXIF orientation; null if undecodable
    ("height", pa.int32()),
    ("status", pa.string()),  # "ok" or "failed"
    ("reason", pa.string()),  # why it failed, else null
    ("label_file", pa.string()),  # relative to the run directory, null if failed
    ("num_masks", pa.int32()),
    # label quality without ground truth (ovlabel.quality, docs/quality.md); null if failed or unknown
    ("quality", pa.float32()),  # the per-image estimate in [0, 1]: lower = review first
    ("margin", pa.float32()),  # area-weighted mean of the masks' classifier margins
    ("pred_iou", pa.float32()),  # area-weighted mean of SAM's predicted IoU (SAM masks only)
    ("stability", pa.float32()),  # area-weighted mean of SAM's stability score
    ("agreement", pa.float32()),  # pixel agreement between the run's labellers (Stage 1.1 vs 1.2)
    ("unlabeled_fraction", pa.float32()),  # share of the image no mask covers
])

#: The manifest columns :func:`write_masks_and_coco` computes (in :attr:`WrittenMasks.quality`).
MANIFEST_QUALITY_COLUMNS = ("quality", "margin", "pred_iou", "stability", "agreement", "unlabeled_fraction")

_MASK_FIELDS = [
    ("source", pa.string()),
    ("class_index", pa.int32()),
    ("score", pa.float32()),
    ("rle_size", pa.list_(pa.int32(), 2)),  # [height, width]
    ("rle_counts", pa.string()),  # pycocotools compressed RLE string
    ("bbox_xyxy", pa.list_(pa.float32(), 4)),  # pixel edges
    ("area", pa.int64()),
    ("points", pa.list_(pa.list_(pa.float32(), 2))),  # prompt points (x, y), null if none
    ("topk_classes", pa.list_(pa.int32())),  # classifier's best class indices, best first; null if none
    ("topk_scores", pa.list_(pa.float32())),  # their probabilities (over the image's detected classes)
    ("stability", pa.float32()),  # SAM's stability score; null if unknown (not a SAM mask, older parts)
    ("margin", pa.float32()),  # CLIP's vocabulary margin (MaskSet.margin); null if unknown
]

#: Per-image part files: the mask fields only.
PART_SCHEMA = pa.schema(_MASK_FIELDS)

#: Per-mask quality signals computed when masks.parquet is written (ovlabel.quality; null = unknown).
_MASK_QUALITY_FIELDS = [
    ("agreement", pa.float32()),  # share of the mask's pixels the run's other labeller gives the same class
    ("quality", pa.float32()),  # the per-mask estimate in [0, 1]
]

MASKS_SCHEMA = pa.schema(
    [("image_id", pa.int64()), ("mask_id", pa.int64()), ("category", pa.string())] + _MASK_FIELDS
    + _MASK_QUALITY_FIELDS
)

#: One image's rows of masks.parquet before they get their ids (:mod:`ovlabel.dataset`): MASKS_SCHEMA
#: without ``image_id`` and ``mask_id``.
FRAGMENT_SCHEMA = pa.schema([f for f in MASKS_SCHEMA if f.name not in ("image_id", "mask_id")])


class RunLayout:
    """Paths inside a run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = self.root / "manifest.parquet"
        self.masks = self.root / "masks.parquet"
        self.coco = self.root / "coco.json"
        self.run_json = self.root / "run.json"
        self.labels = self.root / "labels"
        self.classes_txt = self.root / CLASSES_TXT
        self.id2label = self.root / ID2LABEL_JSON
        self.legend = self.root / LEGEND_PNG
        self.overlays = self.root / "overlays"
        self.parts = self.root / "parts"
        self.cache = self.root / "cache"
        self.soft = self.root / "soft"
        self.evals = self.root / "eval"

    def part(self, settings_key: str, sha256: str) -> Path:
        return self.parts / settings_key / f"{sha256}.parquet"

    def soft_map(self, label_file: str) -> Path:
        """Soft-map path for a manifest ``label_file`` (``labels/a/b.png`` -> ``soft/a/b.npz``)."""
        rel = Path(label_file).relative_to("labels")
        return self.soft / rel.with_suffix(".npz")

    def read_run_json(self) -> dict | None:
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None


#: Longest label-map file name (bytes of one path component): file systems allow 255, and the atomic
#: writer's temporary name and the overlay's ``.jpg`` must still fit beside it.
MAX_NAME_BYTES = 200


def open_complete_run(path: str | Path, masks: bool = False) -> tuple[RunLayout, dict, list[str]]:
    """A complete run directory: its layout (resolved), its run.json and its vocabulary. Raises
    OvlabelError naming ``path`` when it is not a run (no run.json / manifest.parquet, or with ``masks`` no
    masks.parquet), not complete, or records no vocabulary. Every reader of runs opens them here."""
    from ovlabel.errors import OvlabelError

    layout = RunLayout(Path(path).expanduser().resolve())
    doc = layout.read_run_json()
    if doc is None or not layout.manifest.exists():
        raise OvlabelError(f"'{path}' is not an ovlabel run (no run.json / manifest.parquet); make one with "
                           f"`ovlabel pseudo-label IMAGES --out RUN`")
    if doc.get("status") != "complete" or (masks and not layout.masks.exists()):
        raise OvlabelError(f"run '{path}' is not complete (status '{doc.get('status')}'); finish it first by "
                           f"re-running the command that made it")
    classes = list(((doc.get("settings") or {}).get("vocabulary") or {}).get("classes") or [])
    if not classes:
        raise OvlabelError(f"run '{path}' records no vocabulary in run.json (settings.vocabulary.classes)")
    return layout, doc, classes


def label_names(rel_paths: list[str]) -> dict[str, str]:
    """Label-map file name (relative to ``labels/``) for each image path (the manifest's stored ``file``,
    :mod:`ovlabel.io.names`): the path with its suffix replaced by ``.png``. When two images would collide
    (``a.jpg`` and ``a.png``) both keep their suffix (``a.jpg.png``, ``a.png.png``); so does an image
    whose label map would take the name of a folder of label maps (image ``scan.jpg`` beside a folder
    ``scan.png/``). A name still taken, or longer than :data:`MAX_NAME_BYTES`, is shortened and made
    unique with a digest of the image path (``<start>~<12 hex>.png``). Same paths, same names."""
    import hashlib
    from pathlib import PurePosixPath

    stems: dict[str, list[str]] = {}
    for rel in rel_paths:
        stems.setdefault(str(PurePosixPath(rel).with_suffix(".png")), []).append(rel)
    folders = {str(p) for rel in rel_paths for p in PurePosixPath(rel).parents if str(p) != "."}
    out, taken = {}, set()
    for stem, rels in sorted(stems.items()):
        for rel in rels:
            name = stem if len(rels) == 1 and stem not in folders else rel + ".png"
            leaf = PurePosixPath(name).name
            if name in folders or name in taken or len(leaf.encode()) > MAX_NAME_BYTES:
                digest = hashlib.sha256(rel.encode()).hexdigest()[:12]
                start = leaf.encode()[:MAX_NAME_BYTES - 20].decode(errors="ignore")
                name = str(PurePosixPath(name).with_name(f"{start}~{digest}.png"))
            taken.add(name)
            out[rel] = name
    return out


def _mask_columns(ms: MaskSet) -> dict:
    return {
        "source": ms.source,
        "class_index": ms.class_index,
        "score": ms.scores,
        "rle_size": [list(map(int, r["size"])) for r in ms.rles],
        "rle_counts": [r["counts"] for r in ms.rles],
        "bbox_xyxy": ms.boxes.tolist(),
        "area": ms.areas,
        "points": [None if p is None else np.asarray(p, np.float32).tolist() for p in ms.points],
        "topk_classes": [None if t is None else np.asarray(t[0], np.int32).tolist() for t in ms.topk],
        "topk_scores": [None if t is None else np.asarray(t[1], np.float32).tolist() for t in ms.topk],
        "stability": _nullable(ms.stability),
        "margin": _nullable(ms.margin),
    }


def _nullable(values) -> list:
    """float array -> list with None for NaN (Parquet null)."""
    return [None if v != v else float(v) for v in np.asarray(values, dtype=np.float64)]


def _maskset_from_table(t: pa.Table) -> MaskSet:
    d = t.to_pydict()
    rles = [{"size": size, "counts": counts} for size, counts in zip(d["rle_size"], d["rle_counts"])]
    points = [None if p is None else np.asarray(p, np.float32) for p in d["points"]]
    n = len(rles)
    classes, probs = d.get("topk_classes", [None] * n), d.get("topk_scores", [None] * n)  # absent before 0.2
    topk = [None if c is None else (np.asarray(c, np.int32), np.asarray(p, np.float32)) for c, p in zip(classes, probs)]
    stability, margin = (np.array([np.nan if v is None else v for v in d.get(k, [None] * n)], np.float32)
                         for k in ("stability", "margin"))  # absent before the quality estimate
    return MaskSet(
        rles, np.asarray(d["class_index"]), np.asarray(d["score"]), list(d["source"]),
        np.asarray(d["bbox_xyxy"], np.float32).reshape(-1, 4), np.asarray(d["area"]), points, topk, stability,
        margin,
    )


def write_parquet(path: Path, table: pa.Table) -> None:
    """Atomic, deterministic Parquet write (same table, same bytes)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (all columns, or ``columns``), with its schema metadata. Read through
    ``ParquetFile``, not ``pq.read_table``, whose dataset layer costs every command ~0.4 s to import."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def write_part(path: Path, masks: MaskSet, width: int, height: int) -> None:
    """Store one image's masks; width and height ride in the schema metadata."""
    meta = {b"ovlabel": json.dumps({"width": int(width), "height": int(height)}).encode()}
    table = pa.Table.from_pydict(_mask_columns(masks), schema=PART_SCHEMA.with_metadata(meta))
    write_parquet(path, table)


def read_part(path: Path) -> tuple[MaskSet, int, int]:
    """Inverse of :func:`write_part`: ``(masks, width, height)``."""
    table = read_parquet(path)
    meta = json.loads(table.schema.metadata[b"ovlabel"])
    return _maskset_from_table(table), meta["width"], meta["height"]


def part_info(path: Path) -> tuple[int, int, int]:
    """``(num_masks, width, height)`` of a part file from its footer alone (no mask data read)."""
    meta = pq.ParquetFile(path).metadata
    dims = json.loads(meta.metadata[b"ovlabel"])
    return meta.num_rows, dims["width"], dims["height"]


def write_manifest(path: Path, rows: list[dict]) -> None:
    """Write manifest rows (dicts with the :data:`MANIFEST_SCHEMA` fields; a missing one is null), built
    one column at a time: a fraction of the transient memory of ``Table.from_pylist`` on large runs."""
    cols = [pa.array([r.get(f.name) for r in rows], f.type) for f in MANIFEST_SCHEMA]
    write_parquet(path, pa.Table.from_arrays(cols, schema=MANIFEST_SCHEMA))


def read_manifest(path: Path) -> list[dict]:
    return read_parquet(path).to_pylist()


def without_quality(rows: list[dict]) -> list[dict]:
    """Manifest rows without the quality columns (what a run knows before it writes masks.parquet)."""
    return [{k: v for k, v in r.items() if k not in MANIFEST_QUALITY_COLUMNS} for r in rows]


def write_class_files(root: str | Path, class_names: list[str]) -> list[Path]:
    """Write the class files that make label PNGs self-describing into the folder ``root`` (a run
    directory, beside ``labels/``, or an export): ``classes.txt`` (one name per line; line i, 0-based, is
    class index i), ``id2label.json`` (``{"0": name, ...}``) and ``legend.png`` (each index and name beside
    the colour :mod:`ovlabel.overlays` paints it with; 255 = unlabeled). Atomic; same names, same bytes.
    Returns the three paths."""
    from ovlabel.io.atomic import write_json, write_text
    from ovlabel.overlays import render_legend

    root = Path(root)
    bad = [n for n in class_names if not n or "\n" in n or "\r" in n]
    if bad:
        raise ValueError(f"class names must be non-empty single lines; got {bad!r}")
    paths = [root / CLASSES_TXT, root / ID2LABEL_JSON, root / LEGEND_PNG]
    write_text(paths[0], "".join(f"{n}\n" for n in class_names))
    write_json(paths[1], {str(i): n for i, n in enumerate(class_names)})
    with atomic_path(paths[2]) as tmp:
        render_legend(list(class_names)).save(tmp, format="PNG")
    return paths


def _j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def read_masks(path: Path) -> dict[int, MaskSet]:
    """``masks.parquet`` back into one MaskSet per image id (masks in file order), in one pass."""
    table = read_parquet(path)
    ids = np.asarray(table.column("image_id"))
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    bounds = list(starts[1:]) + [len(ids)]
    return {
        int(image_id): _maskset_from_table(table.take(order[a:b]))
        for image_id, a, b in zip(uniq, starts, bounds)
    }


def write_label_png(path: Path, label_map: np.ndarray) -> None:
    """Save a uint8 ``(H, W)`` label map as an 8-bit grayscale PNG (values are class indices)."""
    from PIL import Image

    assert label_map.dtype == np.uint8 and label_map.ndim == 2
    with atomic_path(path) as tmp:
        Image.fromarray(label_map).save(tmp, format="PNG")


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


#: Soft maps: the one optional place a stage may keep per-pixel class probabilities next to its hard labels.
SOFT_MAP_FORMAT = (
    "NumPy .npz with 'probs' float16 (K, h, w) class probabilities in [0, 1] and 'classes' int32 (K,) "
    "vocabulary indices; (h, w) may be coarser than the image (readers resize bilinearly); per pixel the "
    "probabilities sum to at most 1 and the remainder is the probability of 'unlabeled'"
)


def write_soft_map(path: Path, probs: np.ndarray, classes) -> None:
    """Store class probabilities ``probs`` (K, h, w) (any float dtype, values in [0, 1]) for the vocabulary
    indices ``classes`` (K,), as float16, atomically. See :data:`SOFT_MAP_FORMAT`."""
    probs = np.asarray(probs)
    classes = np.asarray(classes, dtype=np.int32).reshape(-1)
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"soft map must be (K, h, w) with K = len(classes); got {probs.shape} and {len(classes)}")
    if len(set(classes.tolist())) != len(classes) or (classes < 0).any() or (classes >= IGNORE_INDEX).any():
        raise ValueError(f"soft-map classes must be distinct vocabulary indices in [0, 255); got {classes.tolist()}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=np.clip(probs, 0, 1).astype(np.float16), classes=classes)


def read_soft_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float32 (K, h, w), classes int32 (K,))`` from :func:`write_soft_map`'s file; ValueError if
    the file does not follow :data:`SOFT_MAP_FORMAT`."""
    with np.load(path, allow_pickle=False) as z:
        if "probs" not in z or "classes" not in z:
            raise ValueError(f"soft map '{path}' lacks 'probs' or 'classes' ({SOFT_MAP_FORMAT})")
        probs, classes = z["probs"].astype(np.float32), z["classes"].astype(np.int32)
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"soft map '{path}': probs {probs.shape} does not match {len(classes)} classes")
    return probs, classes
