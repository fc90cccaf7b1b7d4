"""The CLI end to end with tiny models on synthetic images (issue items 3, 5, 7, 8)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from conftest import blocks_image, save
from ovlabel.artifacts import IGNORE_INDEX, read_label_png
from ovlabel.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# Tiny random CLIP rarely gives one class two crops: with FMbSeg's "more than 1 crop" (--min-crops 2) most
# images would detect nothing, and Stage 1.2 only labels detected classes. These tests check plumbing.
TINY = ["--models", "tiny", "--device", "cpu", "--resolution", "224", "--no-progress", "--points-per-side", "8",
        "--min-crops", "1"]


# Tiny random SAM predicts low IoUs: with SAM's default filters Stage 1.2 would keep nothing to test; its few
# masks per image would mostly round to none at the default Stage 1.2 sample of 0.2, so keep them all.
LOOSE = ["--pred-iou-thresh", "0", "--stability-thresh", "0", "--stage12-ratio", "1"]


def label(images, out, *extra):
    return runner.invoke(app, ["pseudo-label", str(images), "--out", str(out), "--vocab", "coco-stuff", *TINY, *extra])


def add_bad_files(root: Path) -> dict[str, str]:
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("definitely not a png\n")
    good = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "corrupt.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x13" * 40)
    return {"zero.jpg": "empty file", "text.png": "not a recognised image", "truncated.jpg": "truncated", "corrupt.webp": ""}


def artifact_bytes(out: Path) -> dict[str, bytes]:
    files = ["masks.parquet", "coco.json", "manifest.parquet"] + [str(p.relative_to(out)) for p in sorted((out / "labels").rglob("*.png"))]
    return {f: (out / f).read_bytes() for f in files}


def test_end_to_end_artifacts_are_complete_and_consistent(image_folder, tmp_path):
    bad = add_bad_files(image_folder)
    out = tmp_path / "run"
    res = label(image_folder, out, "--overlays", *LOOSE)
    assert res.exit_code == 0, res.output
    assert "9 images: 5 labelled (5 new, 0 already done), 4 failed" in res.output

    manifest = {r["file"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert sorted(manifest) == sorted(["a.jpg", "sub/b.png", "sub/deeper/c.webp", "tiny.png", "wide.bmp", *bad])
    assert [r["image_id"] for r in sorted(manifest.values(), key=lambda r: r["file"])] == list(range(1, 10))
    for name, reason in bad.items():
        assert manifest[name]["status"] == "failed" and reason in manifest[name]["reason"]
        assert manifest[name]["label_file"] is None
    ok = {k: r for k, r in manifest.items() if r["status"] == "ok"}
    assert (ok["wide.bmp"]["width"], ok["wide.bmp"]["height"]) == (600, 8)
    assert (ok["tiny.png"]["width"], ok["tiny.png"]["height"]) == (4, 5)

    coco = COCO(str(out / "coco.json"))
    assert len(coco.loadCats(coco.getCatIds())) == 171
    assert sorted(coco.getImgIds()) == sorted(r["image_id"] for r in ok.values())
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    assert len(masks) == len(coco.getAnnIds()) == sum(r["num_masks"] for r in ok.values())
    assert len(masks) > 0
    for m in masks:
        ann = coco.loadAnns([m["mask_id"]])[0]
        assert ann["image_id"] == m["image_id"] and ann["category_id"] == m["class_index"] + 1
        assert ann["segmentation"]["counts"] == m["rle_counts"] and ann["source"] == m["source"]
        if m["source"] == "stage1.1":
            assert len(m["points"]) == 5 and m["topk_classes"] is None
        else:
            assert m["source"] == "stage1.2" and m["points"] is None
            assert m["topk_classes"][0] == m["class_index"] and len(m["topk_scores"]) == len(m["topk_classes"])
    assert {m["source"] for m in masks} == {"stage1.1", "stage1.2"}
    # COCO masks, painted by score, decode to exactly the PNG label maps
    for r in ok.values():
        lm = read_label_png(out / r["label_file"])
        assert lm.shape == (r["height"], r["width"]) and lm.dtype == np.uint8
        expect = np.full(lm.shape, IGNORE_INDEX, np.uint8)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[r["image_id"]])), key=lambda a: (a["score"], -a["id"]))
        for a in anns:
            expect[coco.annToMask(a).astype(bool)] = a["category_id"] - 1
        assert np.array_equal(lm, expect), r["file"]
        assert (out / "overlays" / Path(r["label_file"]).relative_to("labels")).with_suffix(".jpg").exists()

    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "complete" and doc["ovlabel_version"]
    assert doc["models"]["clip"]["spec"] == "clip:tiny" and doc["models"]["sam"]["random_init"] is True
    assert "meaningless" in doc["note"]
    assert doc["settings"]["detect"]["points_per_class"] == 5
    assert len(doc["settings"]["vocabulary"]["classes"]) == 171
    assert doc["counts"]["failed"] == 4 and doc["counts"]["masks"] == len(masks)
    passes = doc["last_invocation"]["model_passes"]
    assert passes["sam_image_encoder_passes"] == 5  # exactly one SAM embedding per labelled image
    assert not list(out.rglob("*.tmp"))


def test_interrupted_run_resumes_without_redoing_or_losing_images(image_folder, tmp_path, monkeypatch):
    from ovlabel.stages import stage1

    reference = tmp_path / "reference"
    assert label(image_folder, reference, "--image-batch", "1").exit_code == 0

    real = stage1.Stage1.process
    calls = []

    def dies_on_third_batch(self, images, needs, *rest):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, needs, *rest)

    monkeypatch.setattr(stage1.Stage1, "process", dies_on_third_batch)
    out = tmp_path / "run"
    res = label(image_folder, out, "--image-batch", "1")
    assert res.exit_code == 130  # Ctrl-C
    assert len(list((out / "parts").rglob("*.parquet"))) == 2 * 2  # two images, two stages each
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(stage1.Stage1, "process", real)

    res = label(image_folder, out, "--image-batch", "1")
    assert res.exit_code == 0, res.output
    assert "5 labelled (3 new, 2 already done)" in res.output
    assert artifact_bytes(out) == artifact_bytes(reference)


def test_an_image_that_breaks_the_model_is_recorded_and_the_batch_survives(image_folder, tmp_path, monkeypatch):
    from ovlabel.stages import stage1

    real = stage1.Stage1.process

    def fails_on_wide_images(self, images, needs, *rest):
        if any(im.shape[1] == 600 for im in images):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, images, needs, *rest)

    monkeypatch.setattr(stage1.Stage1, "process", fails_on_wide_images)
    out = tmp_path / "run"
    res = label(image_folder, out, "--image-batch", "8")
    assert res.exit_code == 0, res.output
    assert "5 images: 4 labelled (4 new, 0 already done), 1 failed" in res.output
    rows = {r["file"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert rows["wide.bmp"]["status"] == "failed"
    assert rows["wide.bmp"]["reason"] == "processing error: RuntimeError: CUDA out of memory (simulated)"
    monkeypatch.setattr(stage1.Stage1, "process", real)
    res = label(image_folder, out)  # the failed image is retried next time
    assert "5 labelled (1 new, 4 already done), 0 failed" in res.output


def test_rerun_is_a_no_op_and_overwrite_redoes(image_folder, tmp_path):
    out = tmp_path / "run"
    assert label(image_folder, out).exit_code == 0
    before = artifact_bytes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    res = label(image_folder, out)
    assert "5 labelled (0 new, 5 already done)" in res.output
    assert "input since the last run: 0 new, 0 changed, 0 removed, 5 unchanged" in res.output
    assert "recomputing" not in res.output
    assert json.loads((out / "run.json").read_text())["last_invocation"]["model_passes"] == {}  # no model loaded
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    res = label(image_folder, out, "--overwrite")
    assert "5 labelled (5 new, 0 already done)" in res.output
    assert "recomputing: --overwrite (same settings): every stage of every image" in res.output
    assert artifact_bytes(out) == before  # deterministic


def test_changed_and_removed_images_update_only_themselves(image_folder, tmp_path):
    out = tmp_path / "run"
    assert label(image_folder, out, "--overlays").exit_code == 0
    sha = {r["file"]: r["sha256"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    kept = ["labels/wide.png", "labels/sub/b.png", "labels/sub/deeper/c.png", "overlays/wide.jpg"]
    kept += [str(p.relative_to(out)) for f in ("wide.bmp", "sub/b.png", "sub/deeper/c.webp")
             for p in (out / "parts").glob(f"*/{sha[f]}.parquet")]
    stamps = {f: (out / f).stat().st_mtime_ns for f in kept}
    (image_folder / "tiny.png").unlink()
    save(image_folder / "a.jpg", blocks_image(50, 50, [(0, 250, 0)]))
    save(image_folder / "new.png", blocks_image(40, 60, [(0, 0, 0), (255, 255, 255)]))
    res = label(image_folder, out)
    assert "5 labelled (2 new, 3 already done)" in res.output
    assert "input since the last run: 1 new, 1 changed, 1 removed, 3 unchanged" in res.output
    passes = json.loads((out / "run.json").read_text())["last_invocation"]["model_passes"]
    assert passes["sam_image_encoder_passes"] == 2  # the new and the changed image only
    assert len(stamps) == 4 + 3 * 2 and {f: (out / f).stat().st_mtime_ns for f in kept} == stamps  # others untouched
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["file"] for r in manifest) == ["a.jpg", "new.png", "sub/b.png", "sub/deeper/c.webp", "wide.bmp"]
    assert not (out / "labels" / "tiny.png").exists()
    assert read_label_png(out / "labels" / "a.png").shape == (50, 50)
    assert not (out / "overlays" / "tiny.jpg").exists()
    assert not (out / "overlays" / "a.jpg").exists()  # relabelled without --overlays: stale overlay removed
    assert (out / "overlays" / "wide.jpg").exists()
    assert len(list((out / "parts").rglob("*.parquet"))) == 5 * 2  # five images, two stages


def test_new_settings_are_refused_without_overwrite(image_folder, tmp_path):
    out = tmp_path / "run"
    assert label(image_folder, out).exit_code == 0
    before = {d.name for d in (out / "parts").iterdir()}
    res = label(image_folder, out, "--points", "3")
    assert res.exit_code == 2
    assert "different settings (changed: detect)" in res.output and "--overwrite" in res.output
    res = label(image_folder, out, "--points", "3", "--overwrite")
    assert res.exit_code == 0
    assert "recomputing: --overwrite (settings changed: detect): every stage of every image" in res.output
    assert len(pq.read_table(out / "masks.parquet").to_pylist()[0]["points"]) == 3
    after = {d.name for d in (out / "parts").iterdir()}
    assert len(before) == len(after) == 2  # one folder per stage; Stage 1.1's old settings' parts are gone
    assert len(before & after) == 1  # Stage 1.2 does not depend on --points: its key is unchanged


@pytest.mark.parametrize(
    "args,message",
    [
        (["pseudo-label", "{tmp}/nowhere", "--out", "{tmp}/o"], "does not exist"),
        (["pseudo-label", "{tmp}/empty", "--out", "{tmp}/o"], "no images found"),
        (["pseudo-label", "{imgs}", "--out", "{imgs}/run"], "inside the input folder"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--vocab", "cocostuff"], "unknown vocabulary 'cocostuff'"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--vocab", "cat,,dog"], "empty class name at position 2"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--vocab", "cat,dog,cat"], "duplicate class name 'cat'"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--templates", "nope"], "unknown template set 'nope'"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--clip", "clip:ViT-Q-1"], "unknown CLIP architecture"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--device", "tpu"], "unknown device 'tpu'"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/o", "--overlap", "1.5"], "--overlap 1.5 is invalid"),
        (["pseudo-label", "{imgs}", "--out", "{tmp}/notarun"], "not an ovlabel run"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(image_folder, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "thesis.tex").write_text("precious")
    args = [a.format(tmp=tmp_path, imgs=image_folder) for a in args]
    if args[0] == "pseudo-label":
        args += ["--models", "tiny", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert (tmp_path / "notarun" / "thesis.tex").read_text() == "precious"


def test_all_images_failing_exits_1(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.jpg").write_text("nope")
    res = label(tmp_path / "imgs", tmp_path / "run")
    assert res.exit_code == 1
    assert "1 failed" in res.output


def test_inputs_are_never_modified(image_folder, tmp_path):
    snapshot = {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()}
    assert label(image_folder, tmp_path / "run", "--overlays").exit_code == 0
    assert {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()} == snapshot


def test_list_file_input_and_show_command(image_folder, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{image_folder / 'a.jpg'}\n{image_folder / 'sub' / 'b.png'}\n")
    out = tmp_path / "run"
    assert label(lst, out).exit_code == 0
    res = runner.invoke(app, ["show", str(out)])
    assert res.exit_code == 0 and "2 overlays" in res.output
    assert sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.jpg")) == ["a.jpg", "sub/b.jpg"]


def test_models_and_vocab_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    assert re.search(r"clip:ViT-L-14/openai\s+no", res.output)
    assert re.search(r"sam:vit_b\s+no", res.output)
    assert re.search(r"sam:tiny\s+builtin", res.output)
    ckpt = tmp_path / "hub" / "checkpoints" / "sam_vit_b_01ec64.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    res = runner.invoke(app, ["models"])
    assert re.search(r"sam:vit_b\s+yes", res.output) and re.search(r"sam:vit_h\s+no", res.output)
    res = runner.invoke(app, ["vocab"])
    assert "coco-stuff" in res.output and "vild" in res.output
    res = runner.invoke(app, ["vocab", "voc-bg"])
    assert res.output.splitlines()[0].split() == ["0", "background"] and len(res.output.splitlines()) == 21


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from ovlabel.cli import app;"
        "r = CliRunner().invoke(app, ['pseudo-label', '--help']); assert r.exit_code == 0, r.output;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_runs():
    exe = Path(sys.executable).parent / "ovlabel"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ovlabel ")


def test_readme_main_command_works_offline_with_tiny_models(tmp_path, monkeypatch):
    """The README's main command on sample_data, with --models tiny appended (no weights here)."""
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "ovlabel pseudo-label sample_data" in ln)
    args = shlex.split(line[line.index("ovlabel pseudo-label") :])[1:]
    args[1] = str(REPO / "sample_data")
    monkeypatch.chdir(tmp_path)  # its relative --out lands here
    res = runner.invoke(app, [*args, "--models", "tiny", "--resolution", "224", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "4 images: 4 labelled (4 new, 0 already done), 0 failed" in res.output
