"""fabtier.allocator: malloc's settings for an ingesting process, and when `fabtier run` sets
them. Each check runs in a fresh interpreter: the settings are process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fabtier.allocator import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="glibc's mallopt only")

# Allocates, fills and frees an array of 384 KiB `rounds` times; prints the page faults taken.
_CHURN = """
import resource, sys
import numpy as np
from fabtier.allocator import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()
rounds = 200
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    a = np.ones(384 << 7)  # 384 KiB of float64, every page written
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_freed_large_array_goes_back_to_the_system_once_tuned():
    """With the threshold fixed, an array above it has a mapping of its own, given back when
    freed (so a seal's arrays do not stay resident): each round faults its pages in anew.
    Untuned, glibc raises the threshold at the first free and reuses the heap instead."""
    pages = (384 << 10) // 4096
    assert _faults("tuned") >= 200 * pages * 0.9
    assert _faults("untuned") < 200 * pages * 0.2


def test_fabtier_run_tunes_malloc_before_it_imports_the_pipeline():
    """Set first thing: threads started before the settings each keep a heap of their own."""
    script = textwrap.dedent("""
        import sys
        from fabtier import allocator, cli
        seen = []
        allocator.tune_allocator = lambda: seen.append(sorted(m for m in ("fabtier.runner", "fabtier.pipeline")
                                                              if m in sys.modules))
        code = cli.main(["run", "--config", sys.argv[1]])
        print(seen, code)
    """)
    done = subprocess.run([sys.executable, "-c", script, "/nonexistent/fabtier.toml"], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip().startswith("[[]]"), done.stdout + done.stderr
