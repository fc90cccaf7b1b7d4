"""Device and precision selection shared by every stage.

``--device`` is ``auto`` (first CUDA device if there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
``--precision`` is ``auto`` (bf16 autocast on CUDA devices that support it, else fp16; fp32 on CPU),
``fp32``, ``fp16`` or ``bf16``. Weights stay fp32; reduced precision is applied with ``torch.autocast``
so numerically sensitive ops (softmax, layer norm) keep fp32 accumulation.
"""

from __future__ import annotations

import contextlib
import re

from ovlabel.errors import OvlabelError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(value: str):
    """Turn a ``--device`` string into a ``torch.device``; raises OvlabelError if it is unusable here."""
    import torch

    v = value.strip().lower()
    if v == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if v == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", v)
    if not m:
        raise OvlabelError(f"unknown device '{value}': use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise OvlabelError(f"device '{value}' requested but CUDA is not available here; use --device cpu")
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise OvlabelError(f"device '{value}' does not exist: this machine has {count} CUDA device(s)")
    return torch.device(f"cuda:{index}")


def resolve_precision(value: str, device) -> str:
    """Return the concrete precision (``fp32``, ``fp16`` or ``bf16``) for ``value`` on ``device``."""
    import torch

    v = value.strip().lower()
    if v not in PRECISIONS:
        raise OvlabelError(f"unknown precision '{value}': use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if v == "fp16":
            raise OvlabelError("precision 'fp16' needs a CUDA device; on CPU use fp32 or bf16")
        return "fp32" if v == "auto" else v
    if v == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return v


def autocast(device, precision: str):
    """A context manager running ops in ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Torch's CPU random state forked and seeded with ``seed`` for the block: a model built inside gets the
    same initial weights on every run, and the caller's random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
