"""What a benchmark ran on: one line for its output (machine, cores, Python, torch threads, load)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys


def uptime() -> str:
    """``uptime``'s line: the load averages while the benchmark runs (the machine may be shared)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
    """The processor, cores, Python, and torch's version and threads if it is loaded."""
    line = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    torch = sys.modules.get("torch")
    if torch is not None:
        line += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    return line
