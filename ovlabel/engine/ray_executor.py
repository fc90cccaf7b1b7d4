"""The Ray executor: a stage's workers as Ray Data actors, on a local Ray instance or a cluster.

The driver scans the work list as for a local run (content hashes, which parts are missing) and makes it a
Ray dataset; ``map_batches`` runs :class:`ovlabel.engine.executors.RemoteWorker` in a callable-class actor
per accelerator (models loaded once per actor; ``num_gpus=1`` each when the cluster has GPUs; concurrency
= the GPUs, or ``--workers``). Each actor reads its images from their paths (on a cluster the images must
be on storage every node sees at the same path) and returns the masks; the driver writes the parts and
runs the same rebuild as a local run, so the artifacts are byte-identical. Ray Data restarts a dead actor
and retries its batch; if the driver itself dies, a rerun resumes from the parts already written.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from typing import Iterable, Iterator

from ovlabel.engine.executors import RemoteWorker, Report
from ovlabel.engine.stage import Output, Stage, Work
from ovlabel.errors import OvlabelError

RAY_EXTRA = "pip install 'ovlabel[ray]'"


def import_ray():
    """``ray`` and ``ray.data``, or an OvlabelError naming the extra that provides them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OvlabelError(f"--executor ray needs Ray Data, which is not installed: {RAY_EXTRA}") from None
    return ray


class _Actor:
    """A Ray Data callable class: one :class:`RemoteWorker` per actor, pickled works in, pickled results out."""

    def __init__(self, stage_bytes: bytes, device: str, threads: int | None):
        self.remote = RemoteWorker(pickle.loads(stage_bytes), device, threads)

    def __call__(self, batch: dict) -> dict:
        works = [pickle.loads(b) for b in batch["work"]]
        results, report = self.remote(works)
        return {
            "i": batch["i"],
            "result": [pickle.dumps(r) for r in results],
            "report": [pickle.dumps(report)] + [b""] * (len(works) - 1),
        }


class RayExecutor:
    """Runs a stage's batches on Ray Data actors; see the module docstring."""

    wants_images = False

    def __init__(self, stage: Stage):
        self.stage = stage
        self.report = Report()

    def _plan(self, ray) -> tuple[str, float, int]:
        """``(device, GPUs per actor, actors)`` for this stage on the cluster ``ray`` is connected to."""
        gpus = int(ray.cluster_resources().get("GPU", 0))
        wants_gpu = self.stage.device == "auto" or self.stage.device.startswith("cuda")
        if gpus and wants_gpu:
            return "cuda", 1.0, self.stage.workers or gpus
        if self.stage.device.startswith("cuda"):
            raise OvlabelError(f"--device {self.stage.device} but the Ray cluster has no GPU; use --device cpu")
        return "cpu", 0.0, self.stage.workers or 1

    def run(self, works: Iterable[tuple[Work, None]]) -> Iterator[tuple[Work, Output | str]]:
        todo = [w for w, _ in works]  # the scan: every image that needs work, before any actor starts
        if not todo:
            return
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ core is chatty on stderr
        ray = import_ray()
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            address = self.stage.ray_address or os.environ.get("RAY_ADDRESS")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        device, gpus, actors = self._plan(ray)
        shipped = copy.copy(self.stage)
        shipped.inputs = None  # the actors need the settings, not the work list
        threads = _driver_threads()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ds = ray.data.from_items([{"i": i, "work": pickle.dumps(w)} for i, w in enumerate(todo)])
        ds = ds.map_batches(
            _Actor, fn_constructor_args=(pickle.dumps(shipped), device, threads), batch_size=self.stage.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus,
            num_cpus=1 if not gpus else None,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, result, report in zip(batch["i"], batch["result"], batch["report"]):
                if len(report):
                    self.report.add(pickle.loads(report))
                yield todo[int(i)], pickle.loads(result)

    def close(self) -> Report:
        return self.report


def _driver_threads() -> int | None:
    """The driver's torch thread count, for CPU actors: float results then do not depend on where an image
    ran (Ray starts actors with one thread)."""
    import sys

    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
