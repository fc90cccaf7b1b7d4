"""Options every labelling run has: where its workers run, and what it writes besides the labels."""

from __future__ import annotations

from dataclasses import dataclass

from ovlabel.config._checks import _check
from ovlabel.config._fields import knob
from ovlabel.io.limits import DEFAULT_MAX_PIXELS

EXECUTORS = ("local", "ray")

#: ``--max-pixels`` bounds: a 32 x 32 image at least, a 2-gigapixel one at most (PIL's own hard limit for a
#: single image is 2**31 pixels of 1 byte).
MIN_PIXELS, MAX_PIXELS = 1024, 2_000_000_000
#: ``--workers`` at most (processes or actors on one machine or cluster)
MAX_WORKERS = 1024


@dataclass
class RunConfig:
    """How a run executes and what it writes besides its labels (none of it changes the labels).

    - ``overwrite``: redo every image (and allow new settings in an existing run directory).
    - ``overlays``: also write coloured overlays with a legend (``RUN/overlays/``).
    - ``progress``: show a progress bar.
    - ``executor``: ``local`` (this machine: the driver's process, or one worker process per device/worker)
      or ``ray`` (Ray Data actors on a local Ray instance or the cluster at ``ray_address``).
    - ``workers``: parallel workers (local worker processes or Ray actors); None = the command's default.
    - ``ray_address``: a Ray cluster to join (``auto``, ``ray://host:10001``); None = ``$RAY_ADDRESS``, else a
      local Ray instance.
    - ``rehash``: read and hash every input again (by default a file whose size, modification and change
      times and inode are those it was hashed with keeps its hash: :mod:`ovlabel.engine.cache`).
    - ``max_pixels``: an input image with more pixels (width x height) is recorded as skipped, found from its
      header without decoding it (ovlabel's own limit, in place of PIL's decompression-bomb warning;
      docs/troubleshooting.md). It selects inputs, not how they are labelled, so it is not part of a run's
      settings: raising it later labels the images it skipped, lowering it drops them.
    """

    overwrite: bool = knob(False, help="Redo images already done in the output (also allows new settings).",
                           flag="--overwrite")
    overlays: bool = knob(False, help="Also write coloured overlays with a legend to <out>/overlays/.",
                          flag="--overlays")
    progress: bool = knob(True, help="Show a progress bar.")
    executor: str = knob("local", help="Where workers run: local (this machine) or ray (Ray Data actors; pip install "
                         "'ovlabel[ray]').")
    workers: int | None = knob(None, help="Parallel workers (local processes or Ray actors).",
                               shown="one per device, or per GPU of the Ray cluster")
    ray_address: str | None = knob(None, help="Ray cluster to join (auto, ray://host:10001).",
                                   shown="$RAY_ADDRESS, else a local Ray instance")
    rehash: bool = knob(False, help="Read and hash every input image again, instead of trusting the content hash "
                        "of a file whose size, times and inode are unchanged since the last run.", flag="--rehash")
    max_pixels: int = knob(DEFAULT_MAX_PIXELS, help="Skip (and record) input images with more pixels than this, "
                           "found from the header without decoding them.")

    def __post_init__(self):
        _check(self, [
            (self.executor in EXECUTORS, "executor", " or ".join(EXECUTORS)),
            (self.workers is None or 1 <= self.workers <= MAX_WORKERS, "workers",
             f"an integer in [1, {MAX_WORKERS}] (one worker process or actor each)"),
            (MIN_PIXELS <= self.max_pixels <= MAX_PIXELS, "max_pixels",
             f"an integer in [{MIN_PIXELS}, {MAX_PIXELS}] (pixels; {MAX_PIXELS // 10**9} gigapixels decode to "
             f"{MAX_PIXELS * 3 // 2**30} GiB of RGB)"),
        ])
        if self.executor == "ray":
            self._ray_installed()

    def _ray_installed(self) -> None:
        """``--executor ray`` needs the ``ray`` extra: say so before any work (without importing Ray)."""
        import importlib.util

        try:
            found = importlib.util.find_spec("ray") is not None
        except ValueError:  # a module set to None in sys.modules
            found = False
        if not found:
            from ovlabel.errors import OvlabelError

            raise OvlabelError("--executor ray needs Ray Data, which is not installed: pip install 'ovlabel[ray]'")

    def execution(self) -> dict:
        """The engine's execution settings (:class:`ovlabel.engine.Stage` fields)."""
        return {"executor": self.executor, "workers": self.workers, "ray_address": self.ray_address,
                "devices": (), "rehash": self.rehash, "max_pixels": self.max_pixels}


@dataclass
class ModelRunConfig(RunConfig):
    """A run whose workers hold models on a device.

    - ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``precision``: ``auto``, ``fp32``, ``fp16``,
      ``bf16`` (:mod:`ovlabel.device`).
    - ``devices``: a comma list (``cuda:0,cuda:1``): one worker per device (local worker processes, or the
      devices Ray actors are spread over); None = ``device`` alone.
    """

    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    devices: str | None = knob(None, help="Several devices, one worker each, e.g. cuda:0,cuda:1.", shown="--device")

    def execution(self) -> dict:
        devices = tuple(d.strip() for d in (self.devices or "").split(",") if d.strip())
        return super().execution() | {"devices": devices}
