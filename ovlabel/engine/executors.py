"""Executors: where a stage's workers run. The driver (:mod:`ovlabel.engine.run`) hands them the images
that still need work and writes what comes back; they never write the run directory themselves.

- ``inline``: one worker in the driver's process; images are read and decoded ahead on two threads, so
  decoding overlaps the models (the default, and the only one that can take models built by the caller).
- ``processes``: one spawned worker process per device (``--devices cuda:0,cuda:1``) or per CPU worker
  (``refine --workers N``); each builds its models once and reads its images itself.
- ``ray``: Ray Data actors (:mod:`ovlabel.engine.ray_executor`).

Every executor yields ``(work, Output | failure reason)`` pairs; a batch that fails is retried image by
image (:func:`process_batch`) so one bad image cannot sink the others.
"""

from __future__ import annotations

import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ovlabel.engine.stage import Output, Stage, Work, Worker
from ovlabel.errors import ImageDecodeError, OvlabelError


def process_batch(worker: Worker, images: list[np.ndarray], works: list[Work]) -> list[Output | str]:
    """``worker.process`` on a batch; when it raises, each image alone, so that the failure lands on the
    image that causes it (the reason: an OvlabelError's message, else the exception's last line)."""
    try:
        return list(worker.process(images, works))
    except Exception as exc:
        if len(works) > 1:
            return [r for i in range(len(works)) for r in process_batch(worker, images[i : i + 1], works[i : i + 1])]
        if isinstance(exc, OvlabelError):
            return [str(exc)]
        return ["processing error: " + traceback.format_exc(limit=1).strip().splitlines()[-1]]


@dataclass
class Report:
    """What the workers loaded and counted: model identities, pass counters, seconds, device, precision."""

    identities: dict = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    timings: Counter = field(default_factory=Counter)
    device: str | None = None
    precision: str | None = None

    def add(self, other: "Report") -> None:
        self.identities = self.identities or other.identities
        self.stats.update(other.stats)
        self.timings.update(other.timings)
        self.device = self.device or other.device
        self.precision = self.precision or other.precision


class RemoteWorker:
    """A worker in another process (a local worker process or a Ray actor): builds the stage's models once,
    reads and decodes each image itself, and returns results with the counters added since the last call."""

    def __init__(self, stage: Stage, device: str, threads: int | None = None):
        import sys

        self.worker = stage.worker(device)
        self.max_pixels = stage.max_pixels
        if threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self._seen = (Counter(), Counter())

    def __call__(self, works: list[Work]) -> tuple[list[Output | str], Report]:
        from ovlabel.io.atomic import worker_crash_point
        from ovlabel.io.images import decode_image, read_file

        worker_crash_point()

        results: list[Output | str | None] = [None] * len(works)
        todo, images = [], []
        for i, w in enumerate(works):
            try:
                data, sha = read_file(w.item.path)
                if sha != w.sha256:
                    raise ImageDecodeError(f"image changed during the run (sha256 {sha[:12]} != {w.sha256[:12]})")
                images.append(decode_image(data, self.max_pixels))
                todo.append(i)
            except ImageDecodeError as exc:
                results[i] = str(exc)
        if todo:
            for i, r in zip(todo, process_batch(self.worker, images, [works[i] for i in todo])):
                results[i] = r
        stats, timings = Counter(self.worker.stats()), Counter(self.worker.timings())
        report = Report(self.worker.identities(), stats - self._seen[0], timings - self._seen[1],
                        str(self.worker.device), self.worker.precision)
        self._seen = (stats, timings)
        return results, report


class InlineExecutor:
    """The stage's worker in this process, built on the first batch (a run with nothing to do loads
    nothing). Takes decoded images from the driver."""

    wants_images = True

    def __init__(self, stage: Stage, make_worker: Callable[[], Worker] | None = None):
        self.stage, self._worker = stage, None
        self._make = make_worker or (lambda: stage.worker(stage.device))
        self.report = Report()

    def _get(self) -> Worker:
        if self._worker is None:
            self._worker = self._make()
        return self._worker

    def run(self, works: Iterable[tuple[Work, np.ndarray]]) -> Iterator[tuple[Work, Output | str]]:
        for batch in _chunks(works, self.stage.batch_size):
            yield from self._flush(batch)

    def _flush(self, batch) -> Iterator[tuple[Work, Output | str]]:
        worker = self._get()
        results = process_batch(worker, [img for _, img in batch], [w for w, _ in batch])
        yield from zip((w for w, _ in batch), results)

    def close(self) -> Report:
        if self._worker is not None:
            w = self._worker
            self.report = Report(w.identities(), Counter(w.stats()), Counter(w.timings()), str(w.device), w.precision)
        return self.report


_REMOTE: RemoteWorker | None = None


def _init_process(stage: Stage, devices, threads: int | None) -> None:
    global _REMOTE
    _REMOTE = RemoteWorker(stage, devices.get(), threads)


def _run_remote(works: list[Work]):
    return _REMOTE(works)


class ProcessExecutor:
    """``n`` spawned worker processes (one per device in ``devices``, or ``n`` on ``stage.device``), with
    at most two batches per worker in flight; results come back as they finish."""

    wants_images = False

    def __init__(self, stage: Stage, n: int, devices: tuple[str, ...] = ()):
        self.stage, self.n = stage, n
        self.devices = list(devices) or [stage.device] * n
        self.report = Report()

    def run(self, works: Iterable[tuple[Work, None]]) -> Iterator[tuple[Work, Output | str]]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        it = _chunks((w for w, _ in works), self.stage.batch_size)
        first = next(it, None)
        if first is None:
            return
        ctx = mp.get_context("spawn")  # no fork of a possibly multi-threaded parent
        queue = ctx.Queue()
        for d in self.devices:
            queue.put(d)
        pool = ProcessPoolExecutor(max_workers=self.n, mp_context=ctx, initializer=_init_process,
                                   initargs=(self.stage, queue, _cpu_threads(self.devices, self.n)))
        pending: dict = {}
        try:
            with pool:
                pending[pool.submit(_run_remote, first)] = first
                for chunk in it:
                    pending[pool.submit(_run_remote, chunk)] = chunk
                    if len(pending) >= 2 * self.n:
                        yield from self._drain(pending, FIRST_COMPLETED)
                while pending:
                    yield from self._drain(pending, FIRST_COMPLETED)
        except BrokenProcessPool:
            raise OvlabelError(
                f"a worker process died (out of memory?); finished images are kept: re-run the same command "
                f"with fewer workers (now {self.n}) to resume"
            ) from None
        except BaseException:  # Ctrl-C: do not start queued batches; finished images are kept
            for fut in list(pending):
                fut.cancel()
            raise

    def _drain(self, pending: dict, how) -> Iterator[tuple[Work, Output | str]]:
        done, _ = wait(pending, return_when=how)
        for fut in done:
            chunk = pending.pop(fut)
            results, report = fut.result()
            self.report.add(report)
            yield from zip(chunk, results)

    def close(self) -> Report:
        return self.report


def _cpu_threads(devices: list[str], n: int) -> int | None:
    """Torch threads per CPU worker process: the driver's, so that float results do not depend on which
    process labelled an image (worker processes on GPUs keep torch's default)."""
    import sys

    if any(d.startswith("cuda") for d in devices) or "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
