"""The pure part of retrieval: which objects a range needs, their times and costs, the
refusal of expedited over DEEP_ARCHIVE, the request checks, and the guarded states."""

from __future__ import annotations

import pytest

from core.records import DEEP_ARCHIVE, GLACIER
from lifecycle import retrieval as rt
from lifecycle.retrieval import State
from tiers import layout

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR  # 2025-11-24T16:00Z
GIB = 2**30


def f(hour: int, name: str, *, cls: str = GLACIER, size: int = GIB, restored=False, restoring=False,
      modified: int = 0) -> layout.LakeFile:
    key = f"raw/date=2025-11-24/hour={16 + hour:02d}/{name}"
    found = layout.parse(key, size=size, last_modified_ms=modified, archived=cls in (GLACIER, DEEP_ARCHIVE),
                         storage_class=cls, restored=restored, restoring=restoring)
    assert found is not None
    return found


def request(hours: tuple[float, float] = (0, 1), speed: str = "standard", **extra) -> rt.Request:
    return rt.check_request(T0 + int(hours[0] * HOUR), T0 + int(hours[1] * HOUR), speed, **extra)


def test_the_range_takes_every_archived_file_of_the_hours_it_touches():
    files = [f(0, "w0-000000000001.d1.parquet"), f(1, "w0-000000000002.d1.parquet"),
             f(2, "w0-000000000003.d1.parquet"), f(1, "w0-000000000004.d1.parquet", cls="STANDARD"),
             f(1, "w0-000000000005.d1.parquet", restored=True)]
    keys = lambda found: [x.key.rsplit("/", 1)[1] for x in found]  # noqa: E731
    # [from, to): an hour is needed when the range overlaps it, not when it only ends at its start
    assert keys(rt.needed_objects(files, T0 + HOUR, T0 + 2 * HOUR)) == [
        "w0-000000000002.d1.parquet", "w0-000000000005.d1.parquet"]
    assert keys(rt.needed_objects(files, T0 + HOUR - 1, T0 + HOUR + 1)) == [
        "w0-000000000001.d1.parquet", "w0-000000000002.d1.parquet", "w0-000000000005.d1.parquet"]
    assert rt.needed_objects(files, T0 + 3 * HOUR, T0 + 4 * HOUR) == []


def test_files_a_compacted_set_replaces_are_not_restored():
    # A crash between writing a compacted set and deleting its sources leaves both; the set
    # holds every reading, so only its parts are needed (whatever their writer).
    files = [f(0, "w0-000000000001.d1.parquet", modified=1), f(0, "w0-000000000002.d1.parquet", modified=1),
             f(0, "w0.000000000001-000000000002.1of2.d1.parquet", modified=5),
             f(0, "w0.000000000001-000000000002.2of2.f64.parquet", modified=5),
             f(0, "w1-000000000007.d1.parquet", modified=9)]
    assert [x.key.rsplit("/", 1)[1] for x in rt.needed_objects(files, T0, T0 + HOUR)] == [
        "w0.000000000001-000000000002.1of2.d1.parquet", "w0.000000000001-000000000002.2of2.f64.parquet",
        "w1-000000000007.d1.parquet"]


def test_plan_prices_and_times_per_class_and_speed():
    files = [f(0, "w0-000000000001.d1.parquet", size=GIB), f(0, "w0-000000000002.d1.parquet", cls=DEEP_ARCHIVE,
                                                              size=2 * GIB)]
    job = rt.plan(files, request(speed="bulk"), store="s3://b/p", keep_s=86400, now_ms=T0,
                  restore_seconds=rt.s3_restore_seconds)
    # GLACIER bulk: free per GiB + 0.025 per 1,000; DEEP_ARCHIVE bulk: 0.0025 per GiB + 0.025 per 1,000
    assert [o.cost_usd for o in job.objects] == [0.000025, 0.005025]
    assert job.cost_usd == 0.00505 and job.bytes == 3 * GIB
    assert job.eta_s == 48 * 3600  # the slowest: DEEP_ARCHIVE bulk
    assert job.state is State.PENDING and [o.state for o in job.objects] == [State.PENDING] * 2
    job = rt.plan(files, request(speed="standard"), store="s3://b/p", keep_s=86400, now_ms=T0,
                  restore_seconds=rt.s3_restore_seconds)
    assert [o.cost_usd for o in job.objects] == [0.01005, 0.0401] and job.eta_s == 12 * 3600
    job = rt.plan(files[:1], request(speed="expedited"), store="s3://b/p", keep_s=86400, now_ms=T0,
                  restore_seconds=rt.s3_restore_seconds)
    assert job.objects[0].cost_usd == 0.04 and job.eta_s == 300
    assert rt.restore_cost(GLACIER, "standard", 0) == 0.05 / 1000
    assert rt.PRICES_AS_OF.startswith("2025")


def test_expedited_is_refused_where_deep_archive_must_be_restored():
    files = [f(0, "w0-000000000001.d1.parquet"), f(0, "w0-000000000002.d1.parquet", cls=DEEP_ARCHIVE)]
    with pytest.raises(rt.RetrievalError) as refused:
        rt.plan(files, request(speed="expedited"), store="s3://b/p", keep_s=86400, now_ms=T0,
                restore_seconds=rt.s3_restore_seconds)
    message = str(refused.value)
    assert "1 object(s)" in message and "DEEP_ARCHIVE" in message and "no expedited retrieval" in message
    assert "ask for standard or bulk instead" in message and refused.value.parameter == "speed"
    # ... but not when that object is restored or being restored already: nothing is asked of it
    files[1] = f(0, "w0-000000000002.d1.parquet", cls=DEEP_ARCHIVE, restoring=True)
    job = rt.plan(files, request(speed="expedited"), store="s3://b/p", keep_s=86400, now_ms=T0,
                  restore_seconds=rt.s3_restore_seconds)
    assert [o.state for o in job.objects] == [State.PENDING, State.RESTORING]
    assert job.objects[1].cost_usd == 0 and job.state is State.RESTORING


def test_objects_already_readable_cost_nothing_and_an_empty_range_is_ready():
    files = [f(0, "w0-000000000001.d1.parquet", restored=True)]
    job = rt.plan(files, request(), store="s3://b/p", keep_s=1, now_ms=T0, restore_seconds=rt.s3_restore_seconds)
    assert job.state is State.READY and job.cost_usd == 0 and job.eta_s == 0 and job.finished_at == T0
    empty = rt.plan([], request(), store="s3://b/p", keep_s=1, now_ms=T0, restore_seconds=rt.s3_restore_seconds)
    assert empty.state is State.READY and empty.objects == [] and "nothing to restore" in empty.message


def test_machine_and_sensor_are_kept_but_do_not_prune():
    job = rt.plan([f(0, "w0-000000000001.d1.parquet")], request(machine="etch-01", sensor="ch1/temp"),
                  store="file:///x", keep_s=1, now_ms=T0, restore_seconds=rt.s3_restore_seconds)
    public = job.public()
    assert public["machine"] == "etch-01" and public["sensor"] == "ch1/temp" and len(public["objects"]) == 1
    assert "partitioned by hour" in public["pruning"]
    assert rt.plan([], request(), store="x", keep_s=1, now_ms=T0,
                   restore_seconds=rt.s3_restore_seconds).public()["pruning"] is None


def test_requests_that_do_not_fit_name_the_field():
    cases = [((T0, T0, "standard"), "to", "the range is empty"),
             ((T0, T0 - 1, "standard"), "to", "must be after from"),
             ((T0, T0 + 1, "fast"), "speed", "expedited, standard, bulk"),
             (("2025-01-01", T0, "bulk"), "from", "epoch milliseconds"),
             ((True, T0, "bulk"), "from", "epoch milliseconds"),
             ((T0, 10**17, "bulk"), "to", "before 3000-01-01")]
    for args, parameter, words in cases:
        with pytest.raises(rt.RetrievalError) as refused:
            rt.check_request(*args)
        assert refused.value.parameter == parameter and words in str(refused.value), (args, refused.value)
    with pytest.raises(rt.RetrievalError, match="machine must be a non-empty string"):
        rt.check_request(T0, T0 + 1, "bulk", machine="")


def test_states_move_only_forward():
    assert rt.move_job(State.PENDING, State.RESTORING) is State.RESTORING
    assert rt.move_job(State.RESTORING, State.RESTORING) is State.RESTORING
    for final in (State.READY, State.FAILED):
        for other in State:
            if other is not final:
                with pytest.raises(rt.InvalidTransition):
                    rt.move_job(final, other)
    with pytest.raises(rt.InvalidTransition):
        rt.move_job(State.RESTORING, State.PENDING)
    # An object's copy may expire before its job is ready: it is restored again.
    assert rt.move_object(State.READY, State.RESTORING) is State.RESTORING
    with pytest.raises(rt.InvalidTransition):
        rt.move_object(State.FAILED, State.READY)
    assert rt.job_state([]) is State.READY
    assert rt.job_state([State.PENDING, State.PENDING]) is State.PENDING
    assert rt.job_state([State.PENDING, State.READY]) is State.RESTORING
    assert rt.job_state([State.RESTORING, State.FAILED]) is State.RESTORING  # failed once all are settled
    assert rt.job_state([State.READY, State.FAILED]) is State.FAILED
    assert rt.job_state([State.READY, State.READY]) is State.READY


def test_a_job_survives_its_json():
    job = rt.plan([f(0, "w0-000000000001.d1.parquet")], request(machine="m"), store="file:///x", keep_s=60,
                  now_ms=T0, restore_seconds=rt.s3_restore_seconds)
    job.notified = {"mqtt": "pending"}
    again = rt.Job.from_dict(job.as_dict())
    assert again == job and again.as_dict() == job.as_dict()
    assert rt.valid_id(job.id) and not rt.valid_id("../../etc/passwd") and job.id.startswith("20251124T160000Z-")
    assert set(job.public()) >= {"id", "state", "objects", "bytes", "eta_s", "cost_usd", "from", "to"}
    assert "notified" not in job.public()
