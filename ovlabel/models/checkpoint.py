"""Reading weight files safely, and saying in one line why one cannot be used.

Every weights file ovlabel reads (CLIP, SAM, DINOv2, BLIP and text-encoder checkpoints, Stage 2 and mask-prompt
checkpoints, training state) is either safetensors or a PyTorch file loaded with ``torch.load(...,
weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects. When a file
cannot be used, :func:`load_error` turns whatever the loader raised into an :class:`OvlabelError` that names
the file and what was expected, in one line:

- a file that holds code-bearing pickle data (a whole pickled model, or anything naming a Python callable) or
  a TorchScript program is refused, the message says so plainly and how to convert it
  (docs/troubleshooting.md);
- a truncated or foreign file (not a PyTorch zip, not safetensors) says that;
- a state dict that does not fit the architecture lists the first missing and unexpected keys.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from ovlabel.errors import OvlabelError

#: Shown with a refused pickle: turn a trusted file into plain tensors (the full command: docs/troubleshooting.md).
CONVERT = ("only if you trust its source, convert it once to plain tensors in Python, e.g. torch.save(torch.load(IN, "
           "weights_only=False).state_dict(), OUT), and pass OUT instead (docs/troubleshooting.md, "
           "\"Code-bearing pickle data\")")


def load_error(path, exc: BaseException, what: str, expected: str) -> OvlabelError:
    """The one-line error for weights ``path`` (described as ``what``, e.g. ``"SAM checkpoint"``) that raised
    ``exc`` while loading; ``expected`` says what the file should hold (``"a segment-anything vit_b state
    dict"``)."""
    msg = str(exc)
    head = f"cannot use {what} '{path}'"
    if isinstance(exc, OvlabelError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return OvlabelError(f"{head}: the file does not exist (expected {expected})")
    if isinstance(exc, OSError) and not _is_torch_format_error(msg):
        return OvlabelError(f"{head}: {exc.strerror or msg} (expected {expected})")
    named = re.search(r"GLOBAL ([\w.]+)", msg)
    if "Weights only load failed" in msg and named:
        return OvlabelError(f"{head}: the file holds code-bearing pickle data (it names the Python callable "
                            f"{named.group(1)}), which ovlabel never loads (expected {expected}); {CONVERT}")
    if "TorchScript archive" in msg:
        return OvlabelError(f"{head}: the file is a TorchScript archive (a program, e.g. OpenAI's original CLIP .pt), "
                            f"which ovlabel never loads (expected {expected}); {CONVERT}")
    if "Weights only load failed" in msg:
        op = re.search(r"Unsupported operand (\d+)", msg)
        where = f" at pickle opcode {op.group(1)}" if op else ""
        return OvlabelError(f"{head}: not a PyTorch or safetensors checkpoint (the safe unpickler stopped{where}: a "
                            f"corrupt file, or pickle data not saved by torch.save); expected {expected}. If it is a "
                            f"pickle from a trusted source: {CONVERT}")
    if "central directory" in msg or isinstance(exc, EOFError) or "Ran out of input" in msg:
        return OvlabelError(f"{head}: the file is truncated or empty (expected {expected}); download or copy it again")
    if type(exc).__name__ == "SafetensorError" or "safetensors" in type(exc).__module__:
        return OvlabelError(f"{head}: not a valid safetensors file ({msg.splitlines()[0] if msg else exc!r}); "
                            f"expected {expected}")
    if "Error(s) in loading state_dict" in msg or "size mismatch" in msg or "Missing key" in msg:
        return OvlabelError(f"{head}: it does not fit: {_state_dict_summary(msg)} (expected {expected})")
    first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return OvlabelError(f"{head}: not a PyTorch or safetensors checkpoint ({type(exc).__name__}: {first[:200]}); "
                        f"expected {expected}")


def _is_torch_format_error(msg: str) -> bool:
    return "central directory" in msg or "PytorchStreamReader" in msg


def _state_dict_summary(msg: str) -> str:
    """``Missing key(s) ... Unexpected key(s) ... size mismatch ...`` of load_state_dict, shortened."""
    parts = []
    for label, pattern in (("missing keys", r"Missing key\(s\) in state_dict: (.*?)\.\s*(?:Unexpected|size|$)"),
                           ("unexpected keys", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*(?:size|$)")):
        m = re.search(pattern, msg, re.S)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    sizes = re.findall(r"size mismatch for ([\w.]+): copying a param with shape (torch.Size\(\[[\d, ]*\]\)) from "
                       r"checkpoint, the shape in current model is (torch.Size\(\[[\d, ]*\]\))", msg)
    if sizes:
        name, a, b = sizes[0]
        parts.append(f"{len(sizes)} shape mismatches ({name}: {a[11:-1]} in the file, {b[11:-1]} in the model)")
    return "; ".join(parts) or msg.strip().splitlines()[0][:200]


def read_state_dict(path, what: str, expected: str, mmap: bool = False) -> dict:
    """The tensors of a weights file: safetensors (by suffix) or ``torch.load(weights_only=True)``; a
    ``{"model": {...}}`` or ``{"state_dict": {...}}`` wrapper is unwrapped. ``mmap``: map a PyTorch zip file
    instead of reading it (a cheap check of a large file before building the model). Raises the
    OvlabelError of :func:`load_error`."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
                warnings.simplefilter("ignore", UserWarning)
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                except RuntimeError as exc:
                    if not (mmap and "mmap can only be used" in str(exc)):
                        raise
                    state = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as exc:
        raise load_error(path, exc, what, expected) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise OvlabelError(f"cannot use {what} '{path}': it holds a {type(state).__name__}, not a dict of tensors "
                           f"(expected {expected})")
    return state


def check_file(path, what: str, expected: str) -> None:
    """A quick look at a weights file before a library builds a model from it: a safetensors file's header
    is parsed, a PyTorch file is memory-mapped through the safe unpickler (no tensor data read); a file that
    fails raises the OvlabelError of :func:`load_error` at once, before minutes of model building."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:
            raise load_error(path, exc, what, expected) from None
    else:
        read_state_dict(path, what, expected, mmap=True)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (library messages can run to many lines)."""
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg.splitlines()[0][:200]}" if msg else type(exc).__name__


def load_into(module, state: dict, path, what: str, expected: str, strict: bool = True):
    """``module.load_state_dict(state, strict)`` with a mismatch reported by :func:`load_error`."""
    try:
        return module.load_state_dict(state, strict=strict)
    except Exception as exc:
        raise load_error(path, exc, what, expected) from None
