"""fabtier.runner.freeze_startup_objects: what an instance has made by the time it ingests is
left out of later collections; what it makes after is collected as before. In a fresh
interpreter: the freeze is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHECK = textwrap.dedent("""
    import gc
    import numpy, pyarrow, duckdb  # what an instance has loaded by then
    from fabtier.runner import freeze_startup_objects

    class Cycle:
        def __init__(self): self.me = self
        def __del__(self): print("collected", flush=True)

    assert gc.get_freeze_count() == 0
    freeze_startup_objects()
    print("frozen", gc.get_freeze_count() > 10_000, gc.isenabled(), flush=True)
    Cycle()
    gc.collect()
""")


def test_objects_made_before_ingestion_are_frozen_and_later_garbage_still_collected():
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["frozen True True", "collected"]
