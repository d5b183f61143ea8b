"""An idle pipeline: seals that find nothing write nothing, and a clean stop leaves nothing to
recover."""

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
