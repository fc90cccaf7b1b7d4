"""The ``eval`` stage: resolve prediction and ground truth, match classes and files, stream every pair
through one confusion matrix, write the reports.

Memory stays flat: images are read a few at a time by a thread pool and each contributes a
``(K+1) x (K+1)`` count matrix (:mod:`ovlabel.evaluate.metrics`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.config import EvalConfig
from ovlabel.errors import OvlabelError
from ovlabel.evaluate.layouts import GroundTruth, load_ground_truth, reduce_zero_label_lut, stem_key
from ovlabel.evaluate.matching import ClassList, ClassMatch, match_classes, pair_files
from ovlabel.evaluate.metrics import ConfusionMatrix, Scores, image_counts, image_miou


@dataclass
class Prediction:
    """Resolved PRED: label files by key, the class list (None: uses the GT's indices), failed images."""

    kind: str  # "run" or "folder"
    root: Path
    files: dict[str, Path]
    classes: ClassList | None
    failed: dict[str, str] = field(default_factory=dict)  # key -> "failed/skipped in the run: reason"


@dataclass
class EvalResult:
    """Everything ``eval`` computed; :mod:`ovlabel.evaluate.report` renders it."""

    scores: Scores
    confusion: np.ndarray
    gt_classes: ClassList
    match: ClassMatch
    pred: Prediction
    gt: GroundTruth
    cfg: EvalConfig
    protocol: dict | None
    reduce_zero_label: bool
    unlabeled_as: str | None
    evaluated: int
    missing: list[str]
    extra: list[str]
    resized: int
    json_path: Path | None = None
    md_path: Path | None = None
    #: per scored image (its prediction file): its own mIoU, the mean IoU over the classes in its ground
    #: truth or prediction (a per-image view; the dataset scores above sum over images first)
    per_image: dict[Path, float] = field(default_factory=dict)

    def table(self) -> str:
        from ovlabel.evaluate.report import text_table

        return text_table(self)

    def warnings(self) -> list[str]:
        from ovlabel.evaluate.report import warnings

        return warnings(self)


def load_prediction(path: str | Path, pred_classes: str | None) -> Prediction:
    """A run directory (its manifest's label maps and run.json vocabulary) or a folder of label PNGs."""
    from ovlabel.artifacts import RunLayout, open_complete_run, read_manifest
    from ovlabel.evaluate.layouts import find_pngs
    from ovlabel.vocab import load_vocabulary

    root = Path(path).expanduser()
    if not root.is_dir():
        raise OvlabelError(f"prediction '{path}' is not a folder; give a run directory or a folder of label PNGs")
    root = root.resolve()
    layout = RunLayout(root)
    if layout.run_json.exists():
        layout, doc, _ = open_complete_run(root)
        if pred_classes:
            raise OvlabelError("--pred-classes is for a folder of PNGs; a run directory names its own classes")
        files, failed = {}, {}
        for r in read_manifest(layout.manifest):
            key = stem_key(r["file"])
            if r["status"] != "ok":  # failed or skipped (a folder, an animated image, ...): has no prediction
                failed.setdefault(key, f"{r['status']} in the run: {r['reason']}")
                continue
            if key in files:
                raise OvlabelError(
                    f"run '{root}' has two images named '{key}' apart from their suffix ({r['file']}); "
                    f"ground truth is matched by name, so rename one"
                )
            files[key] = root / r["label_file"]
        return Prediction("run", root, files, ClassList.from_json(doc["settings"]["vocabulary"]), failed)
    files = {stem_key(rel): root / rel for rel in find_pngs(root)}
    if not files:
        raise OvlabelError(f"no .png label maps found under prediction folder '{root}'")
    classes = ClassList.from_vocabulary(load_vocabulary(pred_classes)) if pred_classes else None
    return Prediction("folder", root, files, classes)


def evaluate(pred: str | Path, gt: str | Path, cfg: EvalConfig) -> EvalResult:
    """Score ``pred`` against ``gt`` (see :class:`EvalConfig`) and write the JSON and Markdown reports."""
    from ovlabel.evaluate.report import default_report_path, write_reports
    from ovlabel.protocols import get_protocol
    from ovlabel.vocab import load_vocabulary

    protocol = get_protocol(cfg.protocol) if cfg.protocol else None
    prediction = load_prediction(pred, cfg.pred_classes)
    truth = load_ground_truth(gt, cfg.gt_layout, cfg.split)
    report = Path(cfg.report).expanduser().resolve() if cfg.report else default_report_path(prediction, truth, protocol)
    if report == truth.root or truth.root in report.parents:
        raise OvlabelError(f"report '{report}' would be written inside the ground truth '{truth.root}'; choose --report")

    vocab_spec = cfg.gt_classes or (protocol.vocab if protocol else None) or truth.default_vocab
    if vocab_spec:
        gt_classes = ClassList.from_vocabulary(load_vocabulary(vocab_spec))
    elif prediction.classes is not None:
        gt_classes = prediction.classes
    else:
        raise OvlabelError(
            "the ground-truth classes are unknown: give --gt-classes (a preset such as voc-bg, a class file, or "
            "a comma list), a --protocol, or a run directory as PRED"
        )
    rzl = cfg.reduce_zero_label
    if rzl is None:
        rzl = protocol.reduce_zero_label if protocol else truth.default_reduce_zero_label
    unlabeled_name = cfg.unlabeled_as or (protocol.background if protocol else None)
    unlabeled_idx = None
    if unlabeled_name:
        unlabeled_idx = gt_classes.index_of(unlabeled_name)
        if unlabeled_idx is None:
            raise OvlabelError(f"--unlabeled-as '{unlabeled_name}' is not a ground-truth class ({gt_classes.source})")

    k = len(gt_classes)
    match = match_classes(prediction.classes, gt_classes)
    pred_lut = match.lut(k, unlabeled_idx)
    gt_lut = reduce_zero_label_lut(truth.lut) if rzl else truth.lut
    pairs, missing, extra = pair_files(truth.files, prediction.files)
    if not pairs:
        raise OvlabelError(
            f"no prediction matches a ground-truth file by name ({len(truth.files)} GT files, e.g. "
            f"'{next(iter(truth.files))}'; {len(prediction.files)} predictions, e.g. '{next(iter(prediction.files), '-')}')"
        )
    if missing and not cfg.allow_missing:
        why = prediction.failed.get(missing[0])
        raise OvlabelError(
            f"{len(missing)} of {len(truth.files)} ground-truth images have no prediction, e.g. '{missing[0]}'"
            + (f" ({why})" if why else "")
            + "; pass --allow-missing to score the others (the report lists the missing ones)"
        )

    confusion, resized, per_image = _accumulate(pairs, pred_lut, gt_lut, k, cfg)
    result = EvalResult(
        scores=confusion.scores(), confusion=confusion.counts, gt_classes=gt_classes, match=match,
        pred=prediction, gt=truth, cfg=cfg, protocol=protocol.to_json() if protocol else None,
        reduce_zero_label=rzl, unlabeled_as=gt_classes.names[unlabeled_idx] if unlabeled_idx is not None else None,
        evaluated=len(pairs), missing=missing, extra=extra, resized=resized, per_image=per_image,
    )
    result.json_path, result.md_path = write_reports(result, report)
    return result


def _accumulate(pairs, pred_lut, gt_lut, k: int, cfg: EvalConfig) -> tuple[ConfusionMatrix, int, dict[Path, float]]:
    from tqdm import tqdm

    cm = ConfusionMatrix(k)
    resized = 0
    per_image = {}

    def one(item):
        key, gt_path, pred_path = item
        gt = gt_lut[_read_index_png(gt_path, "ground truth")]
        pred = _read_index_png(pred_path, "prediction")
        was_resized = False
        if pred.shape != gt.shape:
            if cfg.resize_pred != "nearest":
                raise OvlabelError(
                    f"size mismatch for '{key}': prediction {pred.shape[1]}x{pred.shape[0]} ({pred_path}), ground "
                    f"truth {gt.shape[1]}x{gt.shape[0]} ({gt_path}); pass --resize-pred nearest to resize predictions"
                )
            pred = _resize_nearest(pred, *gt.shape)
            was_resized = True
        return pred_path, image_counts(pred_lut[pred], gt, k), was_resized

    bar = tqdm(total=len(pairs), unit="img", desc="eval", disable=not cfg.progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for start in range(0, len(pairs), 64 * cfg.workers):  # bounded: a chunk of futures at a time
            for pred_path, counts, was_resized in pool.map(one, pairs[start:start + 64 * cfg.workers]):
                cm.counts += counts
                resized += was_resized
                per_image[pred_path] = image_miou(counts, k)
                bar.update(1)
    bar.close()
    return cm, resized, per_image


def _read_index_png(path: Path, what: str) -> np.ndarray:
    """An 8-bit single-channel label map (grayscale or palette: the stored indices)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise OvlabelError(
                    f"{what} '{path}' is a {im.mode} image; label maps must be 8-bit single-channel (grayscale or "
                    f"palette) PNGs holding class indices, not colour renderings"
                )
            return np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise OvlabelError(f"cannot read {what} '{path}': {exc}") from None


def _resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
