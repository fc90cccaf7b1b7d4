"""``ovlabel benchmark``: reproduce a published setting end to end and print our mIoU beside the papers'.

Work folder layout (every step is a normal run, so re-running the command resumes where it stopped)::

    WORK/
      val-images.txt        the evaluated split's images (a list file, input of segment / pseudo-label)
      train-images.txt      the images pseudo-labelled for training (fmbseg path, unless --train-images)
      pseudo-label/         Stage 1 run of the training images (fmbseg) or of the validation images
                            (training-free)
      align/                the train-align checkpoint (fmbseg)
      segment/              segment run of the validation images (fmbseg)
      eval/                 reports written by eval (JSON and Markdown)
      benchmark.md, benchmark.json   ours beside the published numbers

The steps are called through :mod:`ovlabel.bench.steps` only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ovlabel.config import BenchmarkConfig
from ovlabel.errors import OvlabelError


@dataclass
class BenchmarkResult:
    """Our mIoU (percent), the report paths, and the table rows (method, setting, mIoU, source)."""

    miou: float
    dataset: str
    protocol: str
    markdown: Path
    json: Path
    rows: list[dict] = field(default_factory=list)
    limited: bool = False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_list(path: Path, images) -> Path:
    from ovlabel.io.atomic import write_text

    write_text(path, "".join(f"{p}\n" for p in images))
    return path


def _limited(files: dict, n: int | None) -> list[Path]:
    keys = sorted(files)
    return [files[k] for k in (keys[:n] if n else keys)]


def run_benchmark(dataset_root: str | Path, work: str | Path, cfg: BenchmarkConfig,
                  models: dict | None = None) -> BenchmarkResult:
    """Run ``cfg.path`` on the dataset at ``dataset_root`` with ``cfg.protocol``; write the table into
    ``work``. ``models`` may inject ready models (``clip``, ``sam``, ``dinov2``) for every step."""
    from ovlabel.bench import steps
    from ovlabel.config import EvalConfig, PseudoLabelConfig, SegmentConfig, TrainAlignConfig
    from ovlabel.config.files import build, load_config_file, merge
    from ovlabel.evaluate.layouts import load_ground_truth, split_images
    from ovlabel.protocols import get_protocol

    protocol = get_protocol(cfg.protocol)
    if models is None:  # every weight of every step named now, not one step's at a time
        from ovlabel.models.offline import require_weights
        from ovlabel.models.registry import resolve_models

        wanted = {"clip": cfg.clip, "sam": cfg.sam}
        if cfg.path == "fmbseg" and cfg.checkpoint is None:
            wanted["dinov2"] = cfg.dinov2
        require_weights(resolve_models(cfg.models, wanted), "benchmark")
    work = Path(work).expanduser().resolve()
    truth = load_ground_truth(dataset_root, protocol.gt_layout, cfg.split)
    val = _limited(split_images(truth), cfg.limit)
    work.mkdir(parents=True, exist_ok=True)
    val_list = _write_list(work / "val-images.txt", val)
    inject = lambda *families: {f: models[f] for f in families} if models else None
    stage1_kw = load_config_file(cfg.pseudo_label_config) if cfg.pseudo_label_config else {}
    if cfg.resolution:
        stage1_kw = merge(stage1_kw, {"detect": {"resolution": cfg.resolution}})
    if cfg.points_per_side:
        stage1_kw = merge(stage1_kw, {"automask": {"points_per_side": cfg.points_per_side}})
    common = dict(models=cfg.models, device=cfg.device, progress=cfg.progress)
    stage1 = lambda vocab: build(PseudoLabelConfig, merge(stage1_kw, dict(vocab=vocab, clip=cfg.clip, sam=cfg.sam,
                                                                          **common)))
    if cfg.path == "training-free":
        n = 2
        _say(f"[1/{n}] pseudo-label {len(val)} {protocol.dataset} {cfg.split} images with the protocol's classes "
             f"({protocol.vocab}) -> {work / 'pseudo-label'}")
        _say(steps.pseudo_label(val_list, work / "pseudo-label", stage1(protocol.vocab), inject("clip", "sam")).describe())
        pred = work / "pseudo-label"
    else:
        n = 4 if cfg.checkpoint is None else 2
        ckpt = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else work / "align"
        if cfg.checkpoint is None:
            train_list = _train_images(dataset_root, protocol, cfg, work)
            vocab = cfg.train_vocab or protocol.vocab
            _say(f"[1/{n}] pseudo-label the training images ({train_list}) with {vocab} -> {work / 'pseudo-label'}")
            _say(steps.pseudo_label(train_list, work / "pseudo-label", stage1(vocab), inject("clip", "sam")).describe())
            from ovlabel.stages.align import STATE_FILE

            _say(f"[2/{n}] train-align {cfg.epochs} epochs -> {ckpt}")
            train_kw = {"resolution": cfg.train_resolution} if cfg.train_resolution else {}
            _say(steps.train_align(work / "pseudo-label", ckpt, TrainAlignConfig(
                dinov2=cfg.dinov2, epochs=cfg.epochs, resume=(ckpt / STATE_FILE).exists(), **common, **train_kw),
                inject("dinov2", "clip")).describe())
        _say(f"[{n - 1}/{n}] segment {len(val)} {protocol.dataset} {cfg.split} images into {protocol.vocab} -> "
             f"{work / 'segment'} with the protocol's inference settings")
        _say(steps.segment(val_list, work / "segment", SegmentConfig(
            classes=protocol.vocab, checkpoint=str(ckpt), protocol=protocol.name, device=cfg.device,
            progress=cfg.progress),
            inject("dinov2", "clip")).describe())
        pred = work / "segment"
    _say(f"[{n}/{n}] eval with protocol {protocol.name}")
    result = steps.evaluate(pred, dataset_root, EvalConfig(
        protocol=protocol.name, split=cfg.split, allow_missing=cfg.limit is not None, progress=cfg.progress,
        report=str(work / "eval" / f"{protocol.name}.json")))
    return _write_table(work, cfg, protocol, result, len(val))


def _train_images(dataset_root, protocol, cfg: BenchmarkConfig, work: Path) -> Path:
    """The list file of the images to pseudo-label: ``cfg.train_images`` (a folder or list file, limited
    to ``train_limit``), else the dataset's ``train`` split."""
    from ovlabel.evaluate.layouts import load_ground_truth, split_images
    from ovlabel.io.images import discover_images

    if cfg.train_images:
        src = discover_images(cfg.train_images)
        paths = [e.path for e in src.entries]
        paths = paths[: cfg.train_limit] if cfg.train_limit else paths
    else:
        try:
            train_gt = load_ground_truth(dataset_root, protocol.gt_layout, "train")
        except OvlabelError as exc:
            raise OvlabelError(f"no training images: {exc}; pass --train-images (FMbSeg pseudo-labelled the COCO-Stuff "
                               f"train2017 images)") from None
        paths = _limited(split_images(train_gt), cfg.train_limit)
    return _write_list(work / "train-images.txt", paths)


def _write_table(work: Path, cfg: BenchmarkConfig, protocol, result, n_val: int) -> BenchmarkResult:
    from ovlabel import __version__
    from ovlabel.bench.published import published_for
    from ovlabel.io.atomic import write_json, write_text

    ours = 100.0 * float(result.scores.miou)
    limited = cfg.limit is not None or cfg.train_limit is not None or cfg.models == "tiny"
    how = ("Stage 1 labels of the evaluated images (training-free)" if cfg.path == "training-free"
           else "pseudo-label -> train-align -> segment" + (" (given checkpoint)" if cfg.checkpoint else ""))
    rows = [{"method": p.method, "setting": p.setting, "miou": v, "source": p.source}
            for p, v in published_for(protocol.dataset)]
    rows.append({"method": f"ovlabel {__version__} ({cfg.path})", "setting": f"{how}; models {cfg.models}; "
                 f"{n_val} images", "miou": round(ours, 2), "source": f"this run: {work}"})
    notes = []
    if limited:
        notes.append("not the published setting: " + ", ".join(
            x for x in (f"--limit {cfg.limit}" if cfg.limit else "", f"--train-limit {cfg.train_limit}"
                        if cfg.train_limit else "", "tiny random models" if cfg.models == "tiny" else "") if x))
    if cfg.path == "fmbseg":
        notes.append(f"segment ran with the protocol's inference settings (short side {protocol.short_side}, "
                     f"window {protocol.window}, stride {protocol.stride}, background threshold "
                     f"{protocol.bg_threshold}; segment --protocol {protocol.name})")
    md = [f"# ovlabel benchmark: {protocol.dataset} ({protocol.name}, split {cfg.split})", "",
          "| method | mIoU | setting | source |", "|---|---:|---|---|"]
    md += [f"| {r['method']} | {r['miou']:.2f} | {r['setting']} | {r['source']} |" for r in rows]
    md += [""] + [f"> {x}" for x in notes] + ["", f"eval report: {result.json_path}", ""]
    md_path, json_path = work / "benchmark.md", work / "benchmark.json"
    write_text(md_path, "\n".join(md))
    write_json(json_path, {"dataset": protocol.dataset, "protocol": protocol.to_json(), "path": cfg.path,
                           "ours_miou": ours, "images": n_val, "rows": rows, "notes": notes,
                           "eval_report": str(result.json_path)})
    return BenchmarkResult(ours, protocol.dataset, protocol.name, md_path, json_path, rows, limited)
