"""The run engine (issue 13): executors give the same bytes, configs come from files with options on top,
the Python API returns runs, and every command goes through one engine."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_cli import LOOSE, TINY, artifact_bytes, runner

from ovlabel.cli import app

FAST = ["--vocab", "cat,dog,sky", *LOOSE]


def test_worker_processes_give_the_bytes_of_one_process(image_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(one), *TINY, *FAST])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(two), *TINY, *FAST,
                              "--devices", "cpu,cpu", "--image-batch", "2"])
    assert res.exit_code == 0, res.output
    assert "5 labelled (5 new, 0 already done)" in res.output
    assert artifact_bytes(two) == artifact_bytes(one)
    doc = json.loads((two / "run.json").read_text())
    assert doc["last_invocation"]["parameters"]["devices"] == "cpu,cpu"
    assert doc["last_invocation"]["model_passes"]["sam_image_encoder_passes"] == 5  # summed over both workers
    assert doc["models"]["sam"]["spec"] == "sam:tiny"


def test_config_file_then_options_and_run_json_records_the_result(image_folder, tmp_path):
    cfg = tmp_path / "settings.toml"
    cfg.write_text('vocab = "cat,dog,sky"\nstages = "1.1"\n[detect]\nresolution = 224\nmin_crops = 2\n'
                   '[automask]\npoints_per_side = 4\n', encoding="utf-8")
    out = tmp_path / "run"
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), "--config", str(cfg),
                              "--models", "tiny", "--device", "cpu", "--no-progress", "--min-crops", "3"])
    assert res.exit_code == 0, res.output
    params = json.loads((out / "run.json").read_text())["last_invocation"]["parameters"]
    assert params["detect"]["resolution"] == 224  # from the file
    assert params["detect"]["min_crops"] == 3  # the option wins over the file
    assert params["stages"] == ["1.1"] and params["automask"]["points_per_side"] == 4
    assert params["detect"]["points_per_class"] == 5  # neither: the default
    # the recorded parameters are a config file themselves: the same run again, nothing to do
    again = tmp_path / "params.json"
    again.write_text(json.dumps(params))
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), "--config", str(again)])
    assert res.exit_code == 0, res.output
    assert "5 labelled (0 new, 5 already done)" in res.output


@pytest.mark.parametrize("text, name, message", [
    ('[detect]\nresolutoin = 3\n', "bad.toml", "unknown setting detect.resolutoin for DetectConfig"),
    ("detect = 3\n", "bad.toml", "setting detect must be a table of DetectConfig settings"),
    ("vocab = [\n", "bad.toml", "is not valid TOML"),
    ('{"vocab": "x"}', "bad.yaml", "must be a .toml or .json file"),
])
def test_bad_config_files_are_one_line_errors(image_folder, tmp_path, text, name, message):
    path = tmp_path / name
    path.write_text(text)
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(tmp_path / "o"), "--config", str(path)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_python_api_labels_and_returns_the_run(image_folder, tmp_path):
    import ovlabel

    run = ovlabel.label(image_folder, tmp_path / "run", vocab="cat,dog,sky", models="tiny", device="cpu",
                        progress=False, detect={"resolution": 224}, automask={"points_per_side": 8,
                        "pred_iou_thresh": 0, "stability_score_thresh": 0})
    assert run.summary.labelled == 5 and run.classes == ["cat", "dog", "sky"]
    assert (run.path / "classes.txt").read_text(encoding="utf-8").splitlines() == run.classes  # self-describing PNGs
    assert json.loads((run.path / "id2label.json").read_text()) == {"0": "cat", "1": "dog", "2": "sky"}
    rows = {r["file"]: r for r in run.images()}
    labelled = dict((row["file"], ms) for row, ms in run.masks())
    assert set(labelled) == set(rows) and sum(len(ms) for ms in labelled.values()) == run.summary.masks
    lm = run.label_map("a.jpg")
    assert lm.shape == (rows["a.jpg"]["height"], rows["a.jpg"]["width"]) and lm.dtype == np.uint8
    np.testing.assert_array_equal(lm, labelled["a.jpg"].label_map(*lm.shape))
    redone = ovlabel.classify_masks(run.path, merge={"paint": "small-on-top"}, progress=False)
    assert redone.info["settings"]["merge"]["paint"] == "small-on-top" and redone.summary.new == 0
    with pytest.raises(ovlabel.api.OvlabelError, match="not an image of the run"):
        run.label_map("nope.png")
    assert repr(ovlabel.open_run(run.path)).startswith("Run(")


def test_help_imports_neither_torch_nor_ray():
    code = ("import sys; from typer.testing import CliRunner; from ovlabel.cli import app;"
            "[CliRunner().invoke(app, [c, '--help']) for c in ('pseudo-label', 'segment', 'salience', 'refine')];"
            "import ovlabel; ovlabel.__version__;"
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_generated_option_reaches_the_config(tmp_path):
    """Each command's options are generated from its config: each one sets exactly its field."""
    from ovlabel.cli._options import options_for
    from ovlabel.config import PseudoLabelConfig, RefineConfig, SegmentConfig
    from ovlabel.config.files import build
    from ovlabel.salience_config import SalienceRunConfig

    for cls in (PseudoLabelConfig, RefineConfig, SegmentConfig, SalienceRunConfig):
        opts = options_for(cls)
        assert len({o.decls[0].split("/")[0] for o in opts}) == len(opts)  # no flag twice
        for o in opts:
            default = cls()
            for p in o.path:
                default = getattr(default, p)
            tree = value = {}
            for p in o.path[:-1]:
                tree = tree.setdefault(p, {})
            tree[o.path[-1]] = default
            assert build(cls, value) == cls(), o.path  # the default round-trips through its path


def test_the_cache_is_derived_data_and_a_changed_file_is_always_rehashed(image_folder, tmp_path):
    """Unchanged images' dataset rows come from cache/; deleting or damaging it changes no byte; a file
    whose content changed behind a restored modification time is still seen (its ctime moved)."""
    import os
    import shutil

    out = tmp_path / "run"
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), *TINY, *FAST])
    assert res.exit_code == 0, res.output
    before = artifact_bytes(out)
    shutil.rmtree(out / "cache")
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), *TINY, *FAST])
    assert res.exit_code == 0 and "5 labelled (0 new, 5 already done)" in res.output
    assert artifact_bytes(out) == before and (out / "cache" / "masks.parquet").is_file()
    (out / "cache" / "images.parquet").write_bytes(b"not parquet")
    (out / "cache" / "masks.parquet").write_bytes(b"PAR1 truncated")
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), *TINY, *FAST])
    assert res.exit_code == 0 and "5 labelled (0 new, 5 already done)" in res.output
    assert "damaged cache" in res.output and artifact_bytes(out) == before

    # same size, modification time set back: the content hash is taken again (ctime moved) and the image
    # relabelled; a file only touched (same bytes) is re-hashed but not relabelled
    bmp = image_folder / "wide.bmp"  # uncompressed: change pixels, keep the size
    st = bmp.stat()
    data = bytearray(bmp.read_bytes())
    data[-3000:] = bytes(255 - x for x in data[-3000:])
    bmp.write_bytes(bytes(data))
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (bmp.stat().st_size, bmp.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    os.utime(image_folder / "tiny.png")
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(out), *TINY, *FAST])
    assert res.exit_code == 0 and "5 labelled (1 new, 4 already done)" in res.output, res.output
    assert "1 changed" in res.output


def test_ray_executor_without_ray_names_the_extra(image_folder, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = runner.invoke(app, ["pseudo-label", str(image_folder), "--out", str(tmp_path / "run"), *TINY, *FAST,
                              "--executor", "ray"])
    assert res.exit_code == 2 and "pip install 'ovlabel[ray]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # refused before any work
