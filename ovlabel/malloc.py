"""Keep freed memory in the process on Linux (glibc), for CPU speed.

glibc's malloc serves every large allocation (above a threshold that adapts up to 32 MB) with a fresh
``mmap`` and gives it back to the kernel on ``free``; the next allocation of the same size page-faults and
zero-fills it again. Inference on a CPU allocates and frees such buffers all the time (SAM's mask decoder
materialises a ``(prompts, 4096, 256)`` tensor per layer), and on this project's 2-core machine the kernel
time that costs was measured at 30-55 % of the wall time: SAM ViT-B's image encoder 11.5 s -> 7.2 s, 64
mask-decoder prompts 4.97 s -> 2.31 s, with the two settings below (the effect PyTorch's CPU tuning guide
gets from jemalloc or tcmalloc).

Arrow's default pool (mimalloc) keeps what it frees in per-thread segments of its own: in a run of many
images (``benchmarks/incremental.py``) that retention grew the peak resident size with the number of
images (+31 MiB at 10,000 images, against at most 5 MiB of Arrow allocations live at once), so Arrow is asked
to use the system allocator instead (``ARROW_DEFAULT_MEMORY_POOL=system``), which then reuses what the
rest of the process freed.

glibc and Arrow read these only when a process starts, so :func:`reexec_with_malloc_tuning` restarts
the current command once with them set (before torch is imported, it costs a few tens of milliseconds). The price is
that memory freed by the process is reused by it rather than returned to the system, so the resident size
stays at its peak until the command ends. ``OVLABEL_MALLOC_TUNING=0`` turns it off; values the user set
are kept.
"""

from __future__ import annotations

import os
import sys

#: glibc tunables (``mallopt(3)``): no mmap for large blocks, never trim the heap; Arrow on the same heap.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 40), "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
              "ARROW_DEFAULT_MEMORY_POOL": "system"}


def reexec_with_malloc_tuning(argv: list[str]) -> None:
    """Replace this process by ``argv`` with :data:`MALLOC_ENV` set, unless it is already set, disabled by
    ``OVLABEL_MALLOC_TUNING=0``, or this is not Linux. Returns only when nothing was done."""
    if not sys.platform.startswith("linux") or os.environ.get("OVLABEL_MALLOC_TUNING", "1") == "0":
        return
    missing = {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}
    if not missing:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**os.environ, **missing})
