"""Calibration of the label-quality estimate (ovlabel.quality) against the true per-image mIoU.

What it runs on: the synthetic scenes of tests/scenes.py (112 x 112 px, four classes), labelled by the
real pipeline (``ovlabel.labelling.stage1.label``, Stage 1.1 + 1.2) with colour stand-ins for CLIP and SAM and one
controlled corruption of the labeller per image (none, wrong class, shifted mask, missing object, spurious
class; tests/calibration.py says exactly what each does). Optionally (``--stage2``, the default) a second,
independent labeller: FMbSeg's Stage 2 (``train-align`` on the run, tiny random DINOv2 as the frozen
encoder, then ``segment`` of the same images), whose label maps are the reference of the ``reference``
signal. The estimate is computed from the stored artifacts only (manifest.parquet as written;
masks.parquet and the segment run's label maps for the reference variant); only the comparison reads the
ground truth.

Honest protocol: the weights are fitted (non-negative least squares of the true mIoU on ``coverage x
signal`` columns, free intercept) on the scenes of ``--fit-seed`` and reported on those of
``--test-seed``. First the self signals (margin, pred_iou, stability, agreement), then the share of the
reference against them. ``ovlabel/quality.py``'s WEIGHTS are these fitted numbers, rounded.

    python benchmarks/quality.py                  # 60 + 60 scenes with Stage 2 (~5 min on 2 busy cores)
    python benchmarks/quality.py --no-stage2 --images 30
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SELF = ("margin", "pred_iou", "stability", "agreement")


def machine() -> str:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.machine()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return f"{cpu}, {len(os.sched_getaffinity(0))} usable cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def label_set(root: Path, n: int, seed: int, stage2: bool, epochs: int) -> list[dict]:
    """Scenes, the corrupted run (and Stage 2's run); per image: kind, severity, true mIoU, the manifest's
    estimate and the image-level signals (with the reference when Stage 2 ran)."""
    import calibration as cal
    import torch

    from ovlabel.artifacts import read_label_png, read_manifest, read_masks
    from ovlabel.quality import image_quality

    gt, corruptions, kinds = cal.write_corrupted_scenes(root / "img", n, seed)
    tic = time.perf_counter()
    cal.label_run(root / "img", root / "run", corruptions)
    print(f"  seed {seed}: pseudo-label {n} scenes {time.perf_counter() - tic:.1f} s", flush=True)
    reference = {}
    if stage2:
        from ovlabel.config import SegmentConfig, TrainAlignConfig
        from ovlabel.models.registry import load_model, parse_model
        from ovlabel.stages import segment, train
        from scenes import VOCAB

        models = {"dinov2": load_model(parse_model("dinov2:tiny", "dinov2"), torch.device("cpu"), "fp32"),
                  "clip": cal.SceneClip()}
        tic = time.perf_counter()
        train.train(root / "run", root / "ckpt", TrainAlignConfig(
            models="tiny", resolution=112, device="cpu", feature_cache="none", progress=False, epochs=epochs,
            stage12_fraction=1.0), models)
        segment.run(root / "img", root / "seg", SegmentConfig(
            classes=VOCAB, checkpoint=str(root / "ckpt"), device="cpu", progress=False), models)
        for r in read_manifest(root / "seg" / "manifest.parquet"):
            reference[r["file"]] = read_label_png(root / "seg" / r["label_file"])
        print(f"  seed {seed}: Stage 2 train ({epochs} epochs) + segment {time.perf_counter() - tic:.1f} s", flush=True)
    masks = read_masks(root / "run" / "masks.parquet")
    out = []
    for row in cal.collect(root / "run", gt):
        iq = image_quality(masks[row["image_id"]], row["height"], row["width"], reference=reference.get(row["file"]))
        kind, severity = kinds[row["file"]]
        out.append({"file": row["file"], "kind": kind, "severity": severity, "miou": row["miou"],
                    "stored": row["quality"], "coverage": 1.0 - iq.unlabeled_fraction, **{
                        k: np.nan if v is None else v for k, v in iq.signals.items()},
                    "reference_miou": (cal.image_miou(reference[row["file"]], gt[row["file"]]) if reference else np.nan)})
    return out


def columns(rows, names) -> np.ndarray:
    """``coverage x signal`` per image; a missing signal takes the image's mean of its present ones."""
    x = np.array([[r[k] for k in names] for r in rows], np.float64)
    fill = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=1, keepdims=True)
    x = np.where(np.isfinite(x), x, np.nan_to_num(fill, nan=1.0))
    return x * np.array([r["coverage"] for r in rows])[:, None]


def nnls_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative slopes of ``y ~ x`` with a free intercept, normalised to sum 1."""
    from scipy.optimize import nnls

    w, _ = nnls(x - x.mean(axis=0), y - y.mean())
    return w / w.sum() if w.sum() > 0 else np.full(x.shape[1], 1.0 / x.shape[1])


def estimate(rows, weights: dict) -> np.ndarray:
    from ovlabel.quality import combine

    out = []
    for r in rows:
        c = combine({k: r[k] for k in weights}, weights)
        out.append(r["coverage"] * (1.0 if c is None else c))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=60, help="scenes per set")
    ap.add_argument("--fit-seed", type=int, default=1)
    ap.add_argument("--test-seed", type=int, default=2)
    ap.add_argument("--stage2", action=argparse.BooleanOptionalAction, default=True,
                    help="also train Stage 2 on each run and use its segment run as the reference labeller")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = ap.parse_args()

    import torch

    torch.set_flush_denormal(True)
    print(f"machine: {machine()}")
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="ovlabel-quality-") as tmp:
            report(args, Path(tmp))
    else:
        report(args, args.keep)


def report(args, tmp: Path) -> None:
    import calibration as cal

    from ovlabel.quality import WEIGHTS

    os.environ.setdefault("OVLABEL_CACHE", str(tmp / "cache"))
    tic = time.perf_counter()
    sets = {}
    for name, seed in (("fit", args.fit_seed), ("test", args.test_seed)):
        sets[name] = label_set(tmp / name, args.images, seed, args.stage2, args.epochs)
    if args.keep:
        (tmp / "rows.pkl").write_bytes(pickle.dumps(sets))
    fit, test = sets["fit"], sets["test"]
    y_fit = np.array([r["miou"] for r in fit])
    y_test = np.array([r["miou"] for r in test])

    def rho(rows, values):
        values = np.asarray(values, np.float64)
        y = np.array([r["miou"] for r in rows])
        ok = np.isfinite(values)
        return cal.spearman(values[ok], y[ok])

    print(f"\n{args.images} scenes per set (fit seed {args.fit_seed}, test seed {args.test_seed}); mean true mIoU "
          f"fit {y_fit.mean():.3f}, test {y_test.mean():.3f}")
    print("\nSpearman rank correlation with the true per-image mIoU      fit     test")
    names = SELF + (("reference",) if args.stage2 else ())
    for k in names + ("coverage",):
        col = columns(fit, [k]) if k != "coverage" else np.array([r["coverage"] for r in fit])[:, None]
        colt = columns(test, [k]) if k != "coverage" else np.array([r["coverage"] for r in test])[:, None]
        print(f"  {'coverage x ' + k if k != 'coverage' else 'coverage alone':55s} {rho(fit, col[:, 0]):+.3f}  {rho(test, colt[:, 0]):+.3f}")

    w_self = nnls_weights(columns(fit, SELF), y_fit)
    fitted = {k: round(float(w), 2) for k, w in zip(SELF, w_self)}
    print(f"\nfitted on the fit set, self signals: {fitted}")
    print(f"  estimate with these weights {'':28s} {rho(fit, estimate(fit, fitted)):+.3f}  {rho(test, estimate(test, fitted)):+.3f}")
    shipped_self = {k: v for k, v in WEIGHTS.items() if k != "reference"}
    print(f"  shipped WEIGHTS (ovlabel/quality.py), self   {'':9s} {rho(fit, estimate(fit, shipped_self)):+.3f}  "
          f"{rho(test, estimate(test, shipped_self)):+.3f}")
    print(f"  stored in manifest.parquet (the run's own estimate) {'':3s} {rho(fit, [r['stored'] for r in fit]):+.3f}  "
          f"{rho(test, [r['stored'] for r in test]):+.3f}")
    if args.stage2:
        def self_part(rows):
            return estimate(rows, fitted)

        x = np.stack([self_part(fit), columns(fit, ["reference"])[:, 0]], axis=1)
        lam = round(float(nnls_weights(x, y_fit)[1]), 2)
        with_ref = {k: round(v * (1 - lam), 2) for k, v in fitted.items()} | {"reference": lam}
        print(f"\nfitted share of the reference (Stage 2 segment of the same images): {lam}; weights {with_ref}")
        print(f"  estimate with these weights {'':28s} {rho(fit, estimate(fit, with_ref)):+.3f}  "
              f"{rho(test, estimate(test, with_ref)):+.3f}")
        print(f"  shipped WEIGHTS with the reference {'':21s} {rho(fit, estimate(fit, WEIGHTS)):+.3f}  "
              f"{rho(test, estimate(test, WEIGHTS)):+.3f}")
        ref_miou = np.array([r["reference_miou"] for r in test])
        print(f"  (the reference labeller's own mean mIoU on the test set: {ref_miou.mean():.3f})")

    print("\ntest set by corruption: images, mean true mIoU, mean estimate (self; with reference), Spearman within")
    est_self = estimate(test, shipped_self)
    est_ref = estimate(test, WEIGHTS) if args.stage2 else est_self
    for kind in cal.KINDS:
        idx = [i for i, r in enumerate(test) if r["kind"] == kind]
        if not idx:
            continue
        within = cal.spearman(est_self[idx], y_test[idx]) if len(idx) > 2 else float("nan")
        print(f"  {kind:15s} {len(idx):3d}  {y_test[idx].mean():.3f}  {est_self[idx].mean():.3f}; "
              f"{est_ref[idx].mean():.3f}  {within:+.2f}")
    print(f"\ntotal {time.perf_counter() - tic:.0f} s; runs in {tmp}" + ("" if args.keep else " (temporary)"))


if __name__ == "__main__":
    main()
