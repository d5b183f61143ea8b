"""Property: for any arrival order, lateness, duplication, crash and schedule of the tiering
jobs, `readings_1m` equals a direct aggregation of the final raw data.

Drives the real code: messages go through `Pipeline.process` (codec, hot ring, log),
the real seal, rollup and age-out jobs run against a local lake and a warm DuckDB file, and
the answer is read through the real SQL views.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from analytics.session import open_session, run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle import warmjobs
from lifecycle.scheduler import runner_for
from tests.conftest import make_settings

MINUTE = 60_000
HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR - 3 * MINUTE  # three minutes before an hour
NOW = T0 + 10 * MINUTE
MACHINES = ["etch-01", "cvd-02"]
SENSORS = ["ch1/temp", "rf/power"]

keys = st.tuples(st.sampled_from(MACHINES), st.sampled_from(SENSORS),
                 st.integers(0, 6 * MINUTE - 1).map(lambda o: T0 + o))
values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def histories(draw):
    readings = draw(st.dictionaries(keys, values, min_size=1, max_size=40))
    arrivals = list(readings.items())
    # Duplicates: some readings sent again, some of them with another value (first one wins).
    for key in draw(st.lists(st.sampled_from(sorted(readings)), max_size=10)):
        arrivals.append((key, draw(st.one_of(st.just(readings[key]), values))))
    order = draw(st.permutations(range(len(arrivals))))
    arrivals = [arrivals[i] for i in order]
    steps, position = [], 0
    while position < len(arrivals):
        size = draw(st.integers(1, 8))
        steps.append(("publish", arrivals[position:position + size]))
        position += size
        steps.extend(draw(st.lists(st.sampled_from(["seal", "rollup", "age_out", "restart", "all"]), max_size=3)))
    # How many raw readings the rollup reads at a time: 1 cuts every (machine, sensor) pair
    # into a part of its own, 3 packs some, the default reads everything at once.
    return arrivals, steps, draw(st.sampled_from([1, 3, warmjobs.READ_READINGS]))


def _publish(pipeline: Pipeline, chunk) -> None:
    by_machine: dict[str, list] = {}
    for (machine, sensor, ts), value in chunk:
        by_machine.setdefault(machine, []).append((sensor, ts, value))
    for machine, rows in by_machine.items():
        payload = json.dumps({"sensor": [r[0] for r in rows], "ts": [r[1] for r in rows],
                              "v": [r[2] for r in rows]})
        pipeline.process([(f"fab/{machine}", payload.encode(), 0, 0)])


def _open(settings, clock) -> Pipeline:
    pipeline = Pipeline(settings, clock=clock)
    pipeline.open(warm=True)
    return pipeline


DIRECT = """
SELECT machine, sensor, date_trunc('minute', ts) AS minute, count(*) AS n, min(value) AS "min",
       max(value) AS "max", avg(value) AS "avg", arg_min(value, ts) AS "first", arg_max(value, ts) AS "last"
FROM readings GROUP BY ALL ORDER BY ALL
"""
ROLLED = 'SELECT machine, sensor, minute, n, "min", "max", "avg", "first", "last" FROM readings_1m ORDER BY ALL'


def _same(rolled: list[dict], direct: list[dict]) -> None:
    assert [(r["machine"], r["sensor"], r["minute"]) for r in rolled] == \
        [(r["machine"], r["sensor"], r["minute"]) for r in direct], "minutes differ"
    for a, b in zip(rolled, direct, strict=True):
        assert (a["n"], a["min"], a["max"], a["first"], a["last"]) == (b["n"], b["min"], b["max"], b["first"], b["last"])
        assert math.isclose(a["avg"], b["avg"], rel_tol=1e-12, abs_tol=1e-9)


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_rollups_equal_a_direct_aggregation_of_the_final_raw_data(history):
    arrivals, steps, read_readings = history
    expected: dict = {}
    for key, value in arrivals:
        expected.setdefault(key, value)  # the first arrival of a reading is the one stored
    with tempfile.TemporaryDirectory(prefix="fabtier-prop-") as tmp:
        # The hot ring covers the last 5 minutes: older readings take the unverified path.
        # Retention 6 minutes: minutes before T0+4m age out to agg_1m while late data still comes.
        settings = make_settings(Path(tmp), None, hot={"window": "5m"}, warm={"retention": "6m"})
        clock = ManualClock(NOW)
        pipeline = _open(settings, clock)
        default_read, warmjobs.READ_READINGS = warmjobs.READ_READINGS, read_readings
        try:
            for step in steps:
                if step == "restart":  # stop without sealing: the log is sealed on the next open
                    pipeline.close_offline()
                    pipeline = _open(settings, clock)
                elif step in ("seal", "rollup", "age_out"):
                    runner_for(pipeline).run(step)
                elif step == "all":
                    runner_for(pipeline).run_all()
                else:
                    _publish(pipeline, step[1])
            for step in ("seal", "rollup"):  # the final raw data, all sealed and rolled up
                runner_for(pipeline).run(step)
            session = open_session(pipeline.sql_sources())
            raw = session.sql("SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings").to_arrow_table()
            assert {(m, s, t): v for m, s, t, v in zip(*raw.to_pydict().values(), strict=True)} == expected
            assert raw.num_rows == len(expected)
            direct = session.sql(DIRECT).to_arrow_table().to_pylist()
            _same(session.sql(ROLLED).to_arrow_table().to_pylist(), direct)
            session.close()
            # And once every old minute has moved to agg_1m, still the same answer.
            runner_for(pipeline).run("age_out")
            _same(run_sql(pipeline.sql_sources(), ROLLED).to_pylist(), direct)
        finally:
            warmjobs.READ_READINGS = default_read
            pipeline.close_offline()
