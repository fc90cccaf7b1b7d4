"""``--executor ray`` (issue 13): a local Ray instance gives the local executor's bytes, and a worker killed
mid-run costs nothing but its batch."""

from __future__ import annotations

import json
import os

import pytest
from test_cli import LOOSE, TINY, artifact_bytes, runner

from ovlabel.cli import app

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

FAST = ["--vocab", "cat,dog,sky", *LOOSE, "--image-batch", "2"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    kill_dir = tmp_path_factory.mktemp("kill")
    os.environ["OVLABEL_TEST_KILL_WORKER"] = str(kill_dir)  # inherited by Ray's worker processes
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield kill_dir
    ray.shutdown()
    os.environ.pop("OVLABEL_TEST_KILL_WORKER", None)


def label(images, out, *extra):
    return runner.invoke(app, ["pseudo-label", str(images), "--out", str(out), *TINY, *FAST, *extra])


def test_ray_executor_writes_the_local_executors_bytes_and_survives_a_killed_worker(local_ray, image_folder, tmp_path):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert label(image_folder, local).exit_code == 0
    res = label(image_folder, on_ray, "--executor", "ray", "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "5 labelled (5 new, 0 already done)" in res.output
    assert artifact_bytes(on_ray) == artifact_bytes(local)
    doc = json.loads((on_ray / "run.json").read_text())
    assert doc["status"] == "complete" and doc["last_invocation"]["parameters"]["executor"] == "ray"
    assert doc["last_invocation"]["model_passes"]["sam_image_encoder_passes"] == 5
    assert doc["models"]["clip"]["spec"] == "clip:tiny"

    killed = tmp_path / "killed"
    (local_ray / "armed").write_text("")  # the first worker to take a batch SIGKILLs itself
    res = label(image_folder, killed, "--executor", "ray")
    fired = list(local_ray.glob("fired-*"))
    assert len(fired) == 1 and not (local_ray / "armed").exists()  # a worker process really died
    if res.exit_code != 0:  # Ray retried the batch on a new actor, or the rerun resumes from the parts
        res = label(image_folder, killed, "--executor", "ray")
    assert res.exit_code == 0, res.output
    assert json.loads((killed / "run.json").read_text())["status"] == "complete"
    assert artifact_bytes(killed) == artifact_bytes(local)


def test_ray_executor_with_nothing_to_do_starts_no_worker(local_ray, image_folder, tmp_path):
    out = tmp_path / "run"
    assert label(image_folder, out).exit_code == 0
    res = label(image_folder, out, "--executor", "ray")
    assert res.exit_code == 0 and "5 labelled (0 new, 5 already done)" in res.output
    assert json.loads((out / "run.json").read_text())["last_invocation"]["model_passes"] == {}
