"""The CLI restarts itself once with glibc's malloc tuned and Arrow on the system allocator
(ovlabel/malloc.py), keeping user settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ovlabel.malloc import MALLOC_ENV

CHILD = ("import os, pyarrow; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'), "
         "pyarrow.default_memory_pool().backend_name)")
PARENT = (
    "import sys; from ovlabel.malloc import reexec_with_malloc_tuning;"
    f"reexec_with_malloc_tuning([sys.executable, '-c', {CHILD!r}]); print('not restarted')"
)


def run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != "OVLABEL_MALLOC_TUNING"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", PARENT], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_restarts_once_with_the_tunables_and_keeps_user_values():
    assert run({}) == f"{MALLOC_ENV['MALLOC_MMAP_THRESHOLD_']} {MALLOC_ENV['MALLOC_TRIM_THRESHOLD_']} system"
    assert run({"MALLOC_TRIM_THRESHOLD_": "123"}) == f"{MALLOC_ENV['MALLOC_MMAP_THRESHOLD_']} 123 system"
    assert run({"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}).split()[:2] == [MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"],
                                                                           MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]]
    both = {k: "7" for k in MALLOC_ENV}
    assert run(both) == "not restarted"  # already set: nothing to do
    assert run({"OVLABEL_MALLOC_TUNING": "0"}) == "not restarted"


def test_the_console_entry_point_runs_through_the_restart():
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    out = subprocess.run([sys.executable, "-m", "ovlabel", "--version"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ovlabel ")
