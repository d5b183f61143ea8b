"""An idle pipeline: seals that find nothing write nothing, and a clean stop leaves nothing to
recover."""

import json

from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from tests.conftest import make_settings

T0 = 1_764_000_000_000


def test_idle_seals_rotate_nothing_and_a_clean_close_leaves_no_segment(tmp_path):
    settings = make_settings(tmp_path, None)
    pipeline = Pipeline(settings, clock=ManualClock(T0))
    pipeline.open(warm=False)
    assert pipeline.wal is not None
    active = pipeline.wal.active
    for _ in range(3):
        report = pipeline.seal()
        assert (report.segments, report.rows, report.files) == (0, 0, 0)
    assert pipeline.wal.segments() == [active]
    pipeline.close_offline()
    again = Pipeline(settings, clock=ManualClock(T0))
    again.open(warm=False)
    assert again.wal is not None and again.wal.leftover_segments() == []
    again.close_offline()


def _run_once(settings, machine: str) -> None:
    pipeline = Pipeline(settings, clock=ManualClock(T0))
    pipeline.open(warm=False)
    body = json.dumps({"ts": [T0, T0 + 1, T0 + 2], "sensor": ["a"] * 3, "v": [1, 2, 3]})
    pipeline.process([(f"fab/{machine}", body.encode(), 0, 0)])
    assert pipeline.wal is not None
    pipeline.wal.commit()
    pipeline.seal()
    pipeline.close_offline()


def test_runs_one_after_another_never_reuse_a_segment_number(tmp_path):
    # Lake files are named by log segment: a number used twice would replace the first run's
    # files with the second's (found when a clean stop removed the empty active segment).
    settings = make_settings(tmp_path, None)
    _run_once(settings, "etch-01")
    _run_once(settings, "etch-02")
    pipeline = Pipeline(settings, clock=ManualClock(T0))
    pipeline.open(warm=False)
    rows = pipeline.lake.read_raw().num_rows
    pipeline.close_offline()
    assert rows == 6
