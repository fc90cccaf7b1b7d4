"""Hardening (issue 14): every odd input, damaged run and failed write ends in a one-line error or a recorded
skip, and a run is never left unusable. One test per class of failure, each with several instances of it,
checking the exit code, that no traceback reaches the user, that the message names the offending value, the
manifest rows and summary counts, and that the next run succeeds."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from conftest import blocks_image, save
from ovlabel.cli import app
from ovlabel.errors import OvlabelError

runner = CliRunner()
TINY = ["--models", "tiny", "--device", "cpu", "--resolution", "224", "--no-progress", "--stages", "1.1",
        "--min-crops", "1", "--vocab", "red,green,blue"]
ROOT = os.geteuid() == 0  # root reads and writes through permissions: those instances are injected instead


def run(*args):
    """Invoke the CLI; assert that no traceback reached the user (any exit code)."""
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def label(images, out, *extra):
    return run("pseudo-label", images, "--out", out, *TINY, *extra)


def one_error_line(res) -> str:
    """The single ``error:`` line of a failed command (one line: no traceback, no continuation)."""
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def manifest(out: Path) -> dict[str, dict]:
    return {r["file"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def images(root: Path, n: int = 3) -> Path:
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    for i in range(n):
        save(root / f"img{i}.png", blocks_image(40, 48, [colours[i % 3], colours[(i + 1) % 3]]))
    return root


# 1 ---------------------------------------------------------------------------------------------------------
def test_user_text_files_with_bom_crlf_and_latin1(tmp_path):
    from ovlabel.captions import read_captions
    from ovlabel.config.files import load_config_file
    from ovlabel.training.tune import PARAMS_FORMAT, load_params

    imgs = images(tmp_path / "imgs")
    bom = b"\xef\xbb\xbf"
    (tmp_path / "vocab.txt").write_bytes(bom + b"red\r\ngreen, lime\r\nblue\r\n")
    (tmp_path / "templates.txt").write_bytes(bom + b"a photo of a {}.\r\na {} in the scene.\r\n")
    (tmp_path / "list.txt").write_bytes(bom + b"imgs/img0.png\r\nimgs/img2.png\r\n")
    out = tmp_path / "run"
    res = label(tmp_path / "list.txt", out, "--vocab", tmp_path / "vocab.txt", "--templates", tmp_path / "templates.txt")
    assert res.exit_code == 0, res.output
    assert "2 images: 2 labelled (2 new, 0 already done), 0 failed" in res.output
    assert (out / "classes.txt").read_text(encoding="utf-8") == "red\ngreen\nblue\n"  # no BOM in a class name
    assert sorted(manifest(out)) == ["img0.png", "img2.png"] and {r["status"] for r in manifest(out).values()} == {"ok"}
    assert "2 already done" in label(tmp_path / "list.txt", out, "--vocab", tmp_path / "vocab.txt", "--templates",
                                     tmp_path / "templates.txt").output

    # Latin-1 ("café" as one byte 0xe9): the file, the line and the byte are named; nothing is written
    (tmp_path / "latin.txt").write_bytes(b"red\ncaf\xe9\n")
    (tmp_path / "latin-list.txt").write_bytes(b"imgs/img0.png\nimgs/caf\xe9.png\n")
    (tmp_path / "utf16.txt").write_bytes("red\r\nblue\r\n".encode("utf-16"))
    for args, named in (((imgs, tmp_path / "o1", "--vocab", tmp_path / "latin.txt"), "latin.txt' line 2"),
                        ((tmp_path / "latin-list.txt", tmp_path / "o2"), "latin-list.txt' line 2"),
                        ((imgs, tmp_path / "o3", "--vocab", tmp_path / "utf16.txt"), "UTF-16")):
        res = label(*args)
        assert res.exit_code == 2
        line = one_error_line(res)
        assert named in line and "not UTF-8" in line, line
        assert "0xe9" in line or "UTF-16" in line
        assert not (args[1] / "run.json").exists()

    # the other user text files go through the same reader
    (tmp_path / "params.json").write_bytes(bom + json.dumps({"format": PARAMS_FORMAT, "params": {"layer": 8}}).encode())
    assert load_params(tmp_path / "params.json") == {"layer": 8}
    (tmp_path / "caps.csv").write_bytes(bom + b"image,caption\r\nimg0.png,a red block\r\n")
    assert [(c.image, c.caption) for c in read_captions(tmp_path / "caps.csv")] == [("img0.png", "a red block")]
    (tmp_path / "cfg.toml").write_bytes(bom + b"[detect]\r\nmin_crops = 3\r\n")
    assert load_config_file(tmp_path / "cfg.toml") == {"detect": {"min_crops": 3}}
    for path, content in (("p.json", b'{"format": "caf\xe9"}'), ("c.csv", b"image,caption\na.jpg,caf\xe9\n"),
                          ("x.toml", b"vocab = 'caf\xe9'\n")):
        (tmp_path / path).write_bytes(content)
    for fn, path in ((load_params, "p.json"), (read_captions, "c.csv"), (load_config_file, "x.toml")):
        with pytest.raises(OvlabelError, match=rf"{path}' line \d: not UTF-8 text \(byte 0xe9"):
            fn(tmp_path / path)


# 2 ---------------------------------------------------------------------------------------------------------
def _deny(monkeypatch, file: Path, folder: Path) -> None:
    """``file`` and ``folder`` unreadable: by permissions, or (as root, who reads through them) injected."""
    file.chmod(0), folder.chmod(0)
    if not ROOT:
        return
    import pathlib

    real_read, real_scandir = pathlib.Path.read_bytes, os.scandir

    def read_bytes(self):
        if self == file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    def scandir(path="."):
        if Path(os.fsdecode(path)) == folder:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    monkeypatch.setattr(os, "scandir", scandir)


def test_odd_paths_are_labelled_or_recorded_and_the_rerun_succeeds(tmp_path, monkeypatch):
    from PIL import Image

    from ovlabel.io.names import real_name

    root = images(tmp_path / "imgs", 2)
    latin = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8
    save(root / latin, blocks_image(30, 30, [(200, 20, 20)]))
    save(root / "back\\slash.png", blocks_image(30, 30, [(20, 20, 200)]))
    save(root / "scan.jpg", blocks_image(30, 30, [(20, 200, 20)]))  # its label map would be the folder labels/scan.png
    save(root / "scan.png" / "inner.png", blocks_image(30, 30, [(20, 200, 20)]))
    frames = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(root / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    frames[0].save(root / "still.gif")  # one frame: labelled
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    save(root / "locked" / "hidden.png", blocks_image(30, 30, [(200, 20, 20)]))
    save(root / "secret.png", blocks_image(30, 30, [(200, 20, 20)]))
    (root / "notes.txt").write_text("not an image")
    _deny(monkeypatch, root / "secret.png", root / "locked")

    out = tmp_path / "run"
    res = label(root, out)
    assert res.exit_code == 0, res.output
    assert "12 images: 7 labelled (7 new, 0 already done), 2 failed, 3 skipped" in res.output
    assert "not searched: 1 other files" in res.output
    rows = manifest(out)
    want = {"img0.png": "ok", "img1.png": "ok", "caf\\xe9.png": "ok", "back\\\\slash.png": "ok", "scan.jpg": "ok",
            "scan.png/inner.png": "ok", "still.gif": "ok", "anim.gif": "skipped", "anim.png": "skipped",
            "pipe.jpg": "skipped", "secret.png": "failed", "locked/": "failed"}
    assert {f: r["status"] for f, r in rows.items()} == want
    for f, why in (("anim.gif", "animated GIF (3 frames)"), ("anim.png", "animated APNG"), ("pipe.jpg", "FIFO"),
                   ("secret.png", "permission denied"), ("locked/", "folder cannot be read")):
        assert why in rows[f]["reason"] and f"{want[f]}: {f}: " in res.output
    assert rows["scan.jpg"]["label_file"] == "labels/scan.jpg.png"  # beside the folder labels/scan.png/
    # names that are not UTF-8 are stored reversibly (\xNN) in the manifest, coco.json and the label file name
    assert os.fsencode(real_name(rows["caf\\xe9.png"]["file"])) == b"caf\xe9.png"
    assert real_name(rows["back\\\\slash.png"]["file"]) == "back\\slash.png"
    coco = json.loads((out / "coco.json").read_text(encoding="utf-8"))
    assert {i["file_name"] for i in coco["images"]} == {f for f, s in want.items() if s == "ok"}
    assert (out / rows["caf\\xe9.png"]["label_file"]).is_file()
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert (counts["labelled"], counts["failed"], counts["skipped"]) == (7, 2, 3)

    res = label(root, out)  # the next run does not fail the same way
    assert res.exit_code == 0 and "7 labelled (0 new, 7 already done), 2 failed, 3 skipped" in res.output
    res = run("show", out)  # readers of the run find the images by their stored names
    assert res.exit_code == 0 and "7 overlays" in res.output and (out / "overlays" / "caf\\xe9.jpg").is_file()
    (root / "locked").chmod(0o755), (root / "secret.png").chmod(0o644)


# 3 ---------------------------------------------------------------------------------------------------------
def test_outputs_that_cannot_be_written(tmp_path, monkeypatch):
    import ovlabel.io.atomic as atomic

    root = images(tmp_path / "imgs", 3)
    (tmp_path / "file.txt").write_text("x")
    # a bad location is found before any work: exit 2, one line naming the path and the reason
    res = label(root, tmp_path / "file.txt" / "run")
    assert res.exit_code == 2 and "cannot create" in one_error_line(res) and "file.txt" in one_error_line(res)
    monkeypatch.setattr(atomic, "_fault_hits", 0)
    monkeypatch.setenv("OVLABEL_TEST_FAIL_WRITE", "EROFS:.ovlabel-probe")  # a read-only file system, injected
    res = label(root, tmp_path / "ro")
    assert res.exit_code == 2 and f"cannot write into '{tmp_path / 'ro'}': Read-only file system" in one_error_line(res)

    # the disk fills up during the run (the 3rd part file): exit 1, the two finished images are kept
    out = tmp_path / "run"
    monkeypatch.setattr(atomic, "_fault_hits", 0)
    monkeypatch.setenv("OVLABEL_TEST_FAIL_WRITE", "ENOSPC:*.parquet#3")
    res = label(root, out)
    line = one_error_line(res)
    assert res.exit_code == 1 and "No space left on device" in line and f"{out / 'parts'}" in line, res.output
    assert len(list((out / "parts").rglob("*.parquet"))) == 2 and not list(out.rglob("*.tmp"))
    # ... or when the manifest is written
    monkeypatch.setattr(atomic, "_fault_hits", 0)
    monkeypatch.setenv("OVLABEL_TEST_FAIL_WRITE", "ENOSPC:manifest.parquet")
    res = label(root, out)
    assert res.exit_code == 1 and f"cannot write '{out / 'manifest.parquet'}'" in one_error_line(res)
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    monkeypatch.delenv("OVLABEL_TEST_FAIL_WRITE")
    res = label(root, out)
    assert res.exit_code == 0 and "3 images: 3 labelled (0 new, 3 already done), 0 failed" in res.output
    assert {r["status"] for r in manifest(out).values()} == {"ok"}
    if not ROOT:  # a folder without write permission (root writes through it)
        (tmp_path / "locked").mkdir(mode=0o500)
        res = label(root, tmp_path / "locked")
        assert res.exit_code == 2 and "Permission denied" in one_error_line(res)


# 4 ---------------------------------------------------------------------------------------------------------
def test_damaged_parts_and_run_json_are_recomputed_and_a_failed_start_does_not_block(tmp_path):
    root = images(tmp_path / "imgs", 3)
    out = tmp_path / "run"
    assert label(root, out).exit_code == 0
    parts = sorted((out / "parts").rglob("*.parquet"))
    parts[0].write_bytes(b"garbage, not parquet")
    parts[1].write_bytes(parts[1].read_bytes()[:50])  # truncated by a copy
    (out / "run.json").write_text('{"status": "compl')  # cut off mid-write by another tool
    res = label(root, out)
    assert res.exit_code == 0, res.output
    for p in parts[:2]:
        assert f"warning: damaged part file {p}" in res.output
    assert "3 images: 3 labelled (2 new, 1 already done)" in res.output and "2 damaged part files" in res.output
    assert "run.json was damaged" in res.output
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    # a run that fails before labelling anything (its SAM weights are not a checkpoint) leaves run.json
    # "running" with its settings; the next run with other settings is not refused
    fresh = tmp_path / "fresh"
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"not a checkpoint at all")
    res = label(root, fresh, "--sam", f"sam:vit_b/{bad}")
    assert res.exit_code == 2 and f"'{bad}'" in one_error_line(res)
    assert json.loads((fresh / "run.json").read_text())["status"] == "running"
    res = label(root, fresh)
    assert res.exit_code == 0 and "stopped before labelling any image" in res.output
    assert "3 images: 3 labelled (3 new" in res.output
    # one that labelled images keeps protecting them
    res = label(root, fresh, "--points", "2")
    assert res.exit_code == 2 and "--overwrite" in one_error_line(res)


# 5 ---------------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_that_fail_to_load_name_the_file_for_every_family(tmp_path, monkeypatch):
    import safetensors.torch

    from ovlabel.models.registry import load_model, parse_model
    from ovlabel.stages import align
    from ovlabel.training.align import _check_out

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, evil)
    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), module)  # a whole pickled model, not a state dict
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 20)
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    script = tmp_path / "script.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))  # a TorchScript program (OpenAI's CLIP .pt is one)

    # through the CLI: one line, exit 2, no traceback, the pickle not executed
    root = images(tmp_path / "imgs", 1)
    res = label(root, tmp_path / "run", "--sam", f"sam:vit_b/{evil}")
    line = one_error_line(res)
    assert res.exit_code == 2 and f"'{evil}'" in line and "code-bearing pickle data" in line
    assert "posix.system" in line and "weights_only=False).state_dict()" in line and not marker.exists()
    assert label(root, tmp_path / "run").exit_code == 0  # fixed: the rerun works in the same folder

    cases = [
        ("sam", f"sam:vit_b/{garbage}", "not a PyTorch or safetensors checkpoint"),
        ("sam", f"sam:vit_b/{truncated}", "truncated or empty"),
        ("sam", f"sam:vit_b/{script}", "the file is a TorchScript archive"),
        ("dinov2", f"dinov2:dinov2_vits14/{module}", "code-bearing pickle data (it names the Python callable torch.nn"),
        ("clip", f"clip:ViT-B-16/{evil}", "code-bearing pickle data"),
        ("clip", f"clip:ViT-B-16/{garbage}", "not a PyTorch or safetensors checkpoint"),
    ]
    blip = tmp_path / "blip"
    blip.mkdir()
    (blip / "model.safetensors").write_bytes(b"\xff" * 64)
    cases.append(("blip", f"blip:itm-base-coco/{blip}", "not a valid safetensors file"))
    for family, spec, message in cases:
        with pytest.raises(OvlabelError) as err:
            load_model(parse_model(spec, family), "cpu", "fp32")
        text = str(err.value)
        assert message in text and "\n" not in text and spec.split("/", 1)[1] in text, text
    assert not marker.exists()

    # Stage 2: a checkpoint whose tensors do not fit its head, and a damaged training state
    ckpt = tmp_path / "ckpt"
    head = align.build_module({"in_dim": 16, "out_dim": 8}, seed=0)
    config = {"format": align.CHECKPOINT_FORMAT, "format_version": align.CHECKPOINT_VERSION, "module": head.dims()}
    align.save_weights(ckpt, head, config)
    wrong = {k: torch.zeros(3) for k in head.state_dict()}
    safetensors.torch.save_file(wrong, str(ckpt / align.WEIGHTS_FILE),
                                metadata={"ovlabel_config": json.dumps(config)})
    with pytest.raises(OvlabelError, match=r"cannot use alignment checkpoint '.*align.safetensors': it does not fit: "
                                           r"\d+ shape mismatches"):
        align.load_checkpoint(ckpt, "cpu")
    (ckpt / align.STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(OvlabelError, match="cannot resume from '.*train_state.safetensors': not a readable training state"):
        _check_out(ckpt, resume=True)


# 6 ---------------------------------------------------------------------------------------------------------
def test_options_out_of_bounds_are_named_by_their_flag(tmp_path):
    from ovlabel.config import PseudoLabelConfig
    from ovlabel.config.files import build

    root = images(tmp_path / "imgs", 1)
    out = tmp_path / "run"
    for args, message in (
        (("--min-crops", "0"), "--min-crops 0 is invalid: expected an integer >= 1"),
        (("--resolution", "30000"), "--resolution 30000 is invalid: expected an integer in [16, 8192] (px); 30000 px "
                                    "would take about 92.8 GiB"),
        (("--points-per-batch", "100000"), "--points-per-batch 100000 is invalid"),
        (("--max-pixels", "5"), "--max-pixels 5 is invalid"),
        (("--workers", "0"), "--workers 0 is invalid"),
        (("--stages", "1.3"), "--stages 1.3 is invalid"),
    ):
        res = label(root, out, *args)
        assert res.exit_code == 2 and message in one_error_line(res), res.output
    assert not out.exists()
    (tmp_path / "cfg.toml").write_text("[automask]\npoints_per_side = 0\n")  # a config file: its dotted name
    res = label(root, out, "--config", tmp_path / "cfg.toml")
    line = one_error_line(res)
    assert res.exit_code == 2 and "automask.points_per_side=0 is invalid" in line and "--config '" in line
    with pytest.raises(OvlabelError, match=r"^detect\.min_crops=0 is invalid"):  # Python: the dotted setting
        build(PseudoLabelConfig, {"detect": {"min_crops": 0}})
    assert label(root, out).exit_code == 0


# 7 ---------------------------------------------------------------------------------------------------------
def test_offline_names_every_missing_weight_within_seconds(tmp_path, monkeypatch):
    from ovlabel.io import net
    from ovlabel.models import offline
    from ovlabel.models.registry import parse_model
    from ovlabel.models.text_encoders import parse_text_encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = images(tmp_path / "imgs", 1)
    start = time.monotonic()
    res = run("pseudo-label", root, "--out", tmp_path / "run", "--no-progress")  # the default CLIP and SAM
    assert time.monotonic() - start < 10 and res.exit_code == 2
    assert "needs 2 files" in res.output and "clip:ViT-L-14/openai" in res.output and "sam:vit_h" in res.output
    assert "sam_vit_h_4b8939.pth" in res.output and not (tmp_path / "run").exists()
    res = run("salience", root, "--out", tmp_path / "sal", "--vocab", "red,blue", "--no-progress")
    assert res.exit_code == 2 and "Salesforce/blip-itm-large-flickr" in res.output
    with pytest.raises(OvlabelError) as err:  # train-align's encoders: weights, DINOv2's code, a text encoder
        offline.require_weights({"dinov2": parse_model("dinov2:dinov2_vitb14", "dinov2"),
                                 "bert": parse_text_encoder("bert-base-uncased")}, "train-align")
    assert "needs 3 files" in str(err.value) and "facebookresearch/dinov2" in str(err.value)
    # without the switch, a host that does not answer is found in one short connection attempt (a local port
    # nothing listens on: no test reaches for the network)
    monkeypatch.delenv("OVLABEL_OFFLINE")
    monkeypatch.setattr(net, "_reachable", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert "cannot reach 127.0.0.1" in net.unreachable(f"127.0.0.1:{port}") and time.monotonic() - start < 3
    assert label(root, tmp_path / "run").exit_code == 0  # tiny models need nothing


# 8 ---------------------------------------------------------------------------------------------------------
def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is absent: it must never be decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_images_above_the_pixel_limit_are_skipped_without_decoding(tmp_path):
    root = images(tmp_path / "imgs", 2)
    _png_header(root / "huge.png", 12000, 12000)  # 144 megapixels
    save(root / "wide.png", np.zeros((20, 400, 3), np.uint8))  # 8000 pixels
    out = tmp_path / "run"
    res = label(root, out)
    assert res.exit_code == 0 and "DecompressionBomb" not in res.output
    assert "4 images: 3 labelled (3 new, 0 already done), 0 failed, 1 skipped" in res.output
    reason = manifest(out)["huge.png"]["reason"]
    assert manifest(out)["huge.png"]["status"] == "skipped" and "12000x12000 = 144.0 megapixels" in reason
    assert "--max-pixels 100000000" in reason
    res = label(root, out, "--max-pixels", "5000")  # lowering the limit drops an image, without --overwrite
    assert res.exit_code == 0 and "2 labelled (0 new, 2 already done), 0 failed, 2 skipped" in res.output
    assert manifest(out)["wide.png"]["status"] == "skipped" and not (out / "labels" / "wide.png").exists()
    res = label(root, out)  # raising it labels it again
    assert res.exit_code == 0 and "3 labelled (1 new, 2 already done), 0 failed, 1 skipped" in res.output
