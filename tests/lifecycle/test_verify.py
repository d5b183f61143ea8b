"""Verification of the lake (issue 14): a damaged Parquet file is found by reading it back
against the audit trail, set aside under damaged/ (copied, audited, then removed through the
lake's store), never served as good data, and the `verify` job fails (so /health is degraded)
while a damaged file is set aside. Real files, a real pipeline, real damage: bytes flipped in
the middle, a file cut short, a valid Parquet file holding other rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle import coldjobs, jobs, verify
from lifecycle.scheduler import JobRunner
from tests.conftest import fabtier_cli, make_settings, mosquitto_pub, wait_for, write_config
from tiers import parquetformat as fmt

HOUR = 3_600_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR
NOW = T0 + 2 * HOUR + 600_000
MACHINES = ("etch-01", "cvd-02")


def _payload(first_ts: int, n: int, *, thirds: bool = False) -> bytes:
    # 20.5-style values are stored as DECIMAL (d1); thirds need DOUBLE (f64): two files an hour.
    values = [i / 3 if thirds else 20.0 + i / 10 for i in range(n)]
    return json.dumps({"ts": [first_ts + i * 1000 for i in range(n)], "sensor": ["ch1/temp"] * n,
                       "v": values}).encode()


def _pipeline(tmp_path: Path, **sections) -> Pipeline:
    sections["cold"] = {"seal_in_child": False, **sections.get("cold", {})}
    settings = make_settings(tmp_path, None, **sections)
    pipeline = Pipeline(settings, clock=ManualClock(NOW))
    pipeline.open(warm=False)
    return pipeline


def _seal_hours(pipeline: Pipeline, *, thirds: bool = False) -> None:
    """Two hours of two machines' readings, one segment each (`thirds`: the second machine's
    values need DOUBLE, so each hour has a DECIMAL and a DOUBLE file)."""
    for hour in (T0, T0 + HOUR):
        pipeline.process([(f"fab/{m}", _payload(hour + 60_000, 40, thirds=thirds and m == MACHINES[1]), 0, 0)
                          for m in MACHINES])
        pipeline.wal.commit()
        pipeline.seal()


def _raw_files(pipeline: Pipeline) -> list[str]:
    return sorted(f.key for f in pipeline.lake.visible_files("raw"))


def _path(pipeline: Pipeline, key: str) -> Path:
    return pipeline.settings.data_dir / "lake" / key


def _sql(pipeline: Pipeline, statement: str) -> list[dict]:
    return run_sql(pipeline.sql_sources(), statement).to_pylist()


def _count(pipeline: Pipeline) -> int:
    return _sql(pipeline, "SELECT count(*) AS n FROM readings")[0]["n"]


def _flip_middle(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle - 8, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.fixture
def sealed(tmp_path):
    pipeline = _pipeline(tmp_path)
    _seal_hours(pipeline)
    yield pipeline
    pipeline.close_offline()


def _run_verify(pipeline: Pipeline, runner: JobRunner | None = None) -> dict:
    return (runner or JobRunner(pipeline)).run(jobs.VERIFY)


# ---- an undamaged lake ----------------------------------------------------------------------
def test_an_undamaged_lake_verifies_clean_and_a_second_run_reads_nothing_new(sealed):
    files = _raw_files(sealed)
    assert len(files) == 2
    first = _run_verify(sealed)
    assert "error" not in first, first
    # Every raw file (and the context/alerts/quarantine there are none of) read and judged
    # against its audited write; none without a record.
    assert first["checked"] == 2 and first["damaged"] == 0 and first["without_record"] == 0
    assert first["bytes_read"] == sum(_path(sealed, k).stat().st_size for k in files)
    second = _run_verify(sealed)
    assert second["checked"] == 0 and second["bytes_read"] == 0 and "error" not in second
    state = json.loads((sealed.settings.data_dir / "lifecycle" / "verified.json").read_bytes())
    assert sorted(state["files"]) == files
    # A newly sealed file is the only one read next time.
    sealed.process([(f"fab/{MACHINES[0]}", _payload(T0 + 30 * 60_000, 5), 0, 0)])
    sealed.wal.commit()
    sealed.seal()
    third = _run_verify(sealed)
    assert third["checked"] == 1 and "error" not in third
    assert not (sealed.settings.data_dir / "lake" / "damaged").exists()


def test_every_kind_of_file_is_judged_against_the_checksum_its_writer_recorded(tmp_path):
    pipeline = _pipeline(tmp_path)
    try:
        _seal_hours(pipeline, thirds=True)
        pipeline.process([("fab-ctx/etch-01", json.dumps({"ts": T0 + 1000, "event": "start", "lot": "L1",
                                                          "wafer": "W1", "recipe": "R"}).encode(), 0, 0),
                          ("fab/etch-01", b"not json", 0, 0)])
        pipeline.wal.commit()
        pipeline.seal()
        report = verify.verify_lake(store=pipeline.lake.store, audit=pipeline.audit,
                                    state_dir=tmp_path / "state", writer_id="w0",
                                    hidden_segments=pipeline.hidden_segments, lock=pipeline.seal_lock, at_ms=NOW)
        kinds = {k.split("/")[0] for k in json.loads((tmp_path / "state" / "verified.json").read_bytes())["files"]}
        assert kinds == {"raw", "context", "quarantine"}
        assert report.checked == 6 and not report.damaged and report.without_record == 0  # 2 encodings x 2 hours
    finally:
        pipeline.close_offline()


# ---- damage ----------------------------------------------------------------------------------
def _assert_set_aside(pipeline: Pipeline, key: str, damaged_bytes: bytes, report: dict, rows: int) -> None:
    lake = pipeline.settings.data_dir / "lake"
    assert report["damaged"] == 1 and [d["key"] for d in report["damaged_files"]] == [key]
    assert report["set_aside"] == [f"damaged/{key}"]
    assert "error" in report and key in report["error"]
    assert not (lake / key).exists()
    assert (lake / "damaged" / key).read_bytes() == damaged_bytes  # the bytes as they were found
    # The catalog knows it is gone: the lake's listings no longer name it.
    assert key not in _raw_files(pipeline)
    moves = [m for m in pipeline.audit.table().to_pylist() if m["what"] == "damaged"]
    url = lake.as_uri()
    assert {(m["job"], m["source"], m["target"]) for m in moves} == {
        ("verify", f"{url}/{key}", f"{url}/damaged/{key}"),
        ("verify", f"{url}/{key}", f"(deleted; copy at {url}/damaged/{key})")}
    assert all(m["rows"] == rows and m["bytes"] == len(damaged_bytes) for m in moves)


def test_flipped_bytes_are_found_set_aside_and_never_served(sealed, caplog):
    before = _count(sealed)
    key = _raw_files(sealed)[0]
    rows = pq.read_metadata(_path(sealed, key)).num_rows
    damaged = _flip_middle(_path(sealed, key))
    runner = JobRunner(sealed)
    with caplog.at_level("ERROR", logger="fabtier.lifecycle"):
        report = _run_verify(sealed, runner)
    _assert_set_aside(sealed, key, damaged, report, rows)
    # Never wrong data: the rest is served as before, the damaged file's readings not at all.
    assert _count(sealed) == before - rows
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("damaged lake file")]
    assert key in line and "restore the file from a backup" in line and "deleted after the seal" in line
    # The failed run is what /health shows as degraded (the runner's open problems).
    (problem,) = runner.faults.problems()
    assert problem.step == "verify" and f"damaged/{key}" in problem.message
    # It stays failed until someone deals with the copy under damaged/; then it works again.
    assert "error" in _run_verify(sealed, runner)
    (sealed.settings.data_dir / "lake" / "damaged" / key).unlink()
    assert "error" not in _run_verify(sealed, runner) and runner.faults.problems() == []


def test_a_truncated_file_is_found_and_never_served(sealed):
    before = _count(sealed)
    key = _raw_files(sealed)[1]
    rows = pq.read_metadata(_path(sealed, key)).num_rows
    path = _path(sealed, key)
    truncated = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(truncated)
    report = _run_verify(sealed)
    _assert_set_aside(sealed, key, truncated, report, rows)
    assert "does not read as Parquet" in report["damaged_files"][0]["problem"]
    assert _count(sealed) == before - rows


def test_a_valid_parquet_file_with_other_rows_is_a_checksum_mismatch(sealed):
    key = _raw_files(sealed)[0]
    path = _path(sealed, key)
    good = pq.read_table(path)
    rows = good.num_rows
    # One reading's value changed, the file otherwise as fabtier writes it: it parses, has the
    # right columns and row count; only the content checksum tells.
    values = good.column("value").to_pylist()
    values[3] = values[3] + 1
    other = good.set_column(3, "value", pa.array(values, good.schema.field("value").type))
    forged = fmt.to_parquet_bytes(other)
    path.write_bytes(forged)
    changed = _sql(sealed, "SELECT count(*) AS n FROM readings WHERE value = "
                           f"{float(fmt.exact_float64(other.column('value').slice(3, 1))[0].as_py())!r}")
    assert changed[0]["n"] >= 1  # served before verification
    report = _run_verify(sealed)
    _assert_set_aside(sealed, key, forged, report, rows)
    assert report["damaged_files"][0]["problem"].startswith("its content checksum differs from the audited one")
    wrong = {(r["machine"], r["sensor"], r["ts"]) for r in other.slice(3, 1).to_pylist()}
    served = {(r["machine"], r["sensor"], r["ts"]) for r in _sql(sealed, "SELECT machine, sensor, ts FROM readings")}
    assert not wrong & served


def test_bit_rot_that_keeps_size_and_time_is_found_by_a_full_run(sealed):
    assert _run_verify(sealed)["checked"] == 2
    key = _raw_files(sealed)[0]
    path = _path(sealed, key)
    stat = path.stat()
    damaged = _flip_middle(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as a disk's own damage leaves it
    assert _run_verify(sealed)["checked"] == 0  # incremental: nothing new or changed
    report = jobs.verify_lake(sealed, at_ms=NOW, full=True).public()
    assert report["checked"] == 2 and [d["key"] for d in report["damaged_files"]] == [key]
    assert (sealed.settings.data_dir / "lake" / "damaged" / key).read_bytes() == damaged


def test_a_file_without_an_audit_record_is_checked_for_parsing_only(sealed):
    sealed.audit.path.unlink()  # as for files written before the audit trail existed
    first, second = _raw_files(sealed)
    table = pq.read_table(_path(sealed, first))
    _path(sealed, first).write_bytes(fmt.to_parquet_bytes(table.slice(1)))  # other rows, but Parquet
    _path(sealed, second).write_bytes(_path(sealed, second).read_bytes()[:100])
    report = _run_verify(sealed)
    assert report["without_record"] == 2
    assert [d["key"] for d in report["damaged_files"]] == [second]


def test_a_damaged_part_of_a_compacted_set_is_replaced_by_an_empty_part(tmp_path):
    pipeline = _pipeline(tmp_path, cold={"compact_after": "1s"})
    try:
        _seal_hours(pipeline, thirds=True)  # each hour: a d1 and an f64 file per segment
        pipeline.process([(f"fab/{MACHINES[1]}", _payload(T0 + 120_000, 30, thirds=True), 0, 0)])
        pipeline.wal.commit()
        pipeline.seal()
        before = _count(pipeline)
        coldjobs.compact(pipeline, NOW + 3 * HOUR)
        compacted = [f for f in pipeline.lake.visible_files("raw") if f.compacted and f.parts == 2]
        assert compacted, _raw_files(pipeline)
        part = compacted[0]
        rows = pq.read_metadata(_path(pipeline, part.key)).num_rows
        _flip_middle(_path(pipeline, part.key))
        report = _run_verify(pipeline)
        assert [d["key"] for d in report["damaged_files"]] == [part.key]
        assert report["damaged_files"][0]["replaced_by_empty"] is True
        # The set stays complete, so its other part is still read (and not deleted as a leftover).
        assert pq.read_metadata(_path(pipeline, part.key)).num_rows == 0
        assert _count(pipeline) == before - rows
        coldjobs.compact(pipeline, NOW + 3 * HOUR)
        assert _count(pipeline) == before - rows
        # The empty part is audited as written: the next full run finds nothing new to set aside.
        assert jobs.verify_lake(pipeline, at_ms=NOW, full=True).damaged == []
    finally:
        pipeline.close_offline()


# ---- the command line and /health --------------------------------------------------------------
def test_the_cli_exits_1_and_names_the_damaged_file(tmp_path):
    pipeline = _pipeline(tmp_path)
    _seal_hours(pipeline)
    settings = pipeline.settings
    key = _raw_files(pipeline)[0]
    pipeline.close_offline()
    config = write_config(settings, tmp_path / "fabtier.toml")
    clean = fabtier_cli("lake", "verify", "--config", str(config), "--json")
    assert json.loads(clean.stdout)["checked"] == 2
    again = json.loads(fabtier_cli("lake", "verify", "--config", str(config), "--json").stdout)
    assert again["checked"] == 0 and again["unchanged"] == 2

    _flip_middle(settings.data_dir / "lake" / key)
    found = fabtier_cli("lake", "verify", "--config", str(config), check=False)
    assert found.returncode == 1, found.stderr
    assert f"DAMAGED {key}" in found.stdout and f"damaged/{key}" in found.stderr
    assert "Traceback" not in found.stderr
    # Still set aside: still exit 1, with nothing new read; --full reads everything again.
    full = fabtier_cli("lake", "verify", "--config", str(config), "--full", "--json", check=False)
    assert full.returncode == 1 and json.loads(full.stdout)["checked"] == 1
    rows = json.loads(fabtier_cli("sql", "SELECT count(*) AS n FROM readings", "--config", str(config),
                                  "--format", "json").stdout)
    assert rows == [{"n": 40 * len(MACHINES)}]  # one of the two hours is left


def test_a_damaged_context_file_that_stops_a_start_is_set_aside_by_the_cli(tmp_path):
    pipeline = _pipeline(tmp_path)
    pipeline.process([("fab-ctx/etch-01", json.dumps({"ts": T0 + 1000, "event": "start", "lot": "L1",
                                                      "wafer": "W1", "recipe": "R"}).encode(), 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()
    settings = pipeline.settings
    (key,) = [f.key for f in pipeline.lake.visible_files("context")]
    pipeline.close_offline()
    path = settings.data_dir / "lake" / key
    path.write_bytes(path.read_bytes()[:50])
    broken = Pipeline(settings)
    with pytest.raises(pa.ArrowInvalid):  # a start recovers lot context from the lake
        broken.open(warm=False)
    broken.close_offline()  # what the process's exit does: the data directory is free again
    config = write_config(settings, tmp_path / "fabtier.toml")
    result = fabtier_cli("lake", "verify", "--config", str(config), "--json", check=False)
    assert result.returncode == 1 and [d["key"] for d in json.loads(result.stdout)["damaged_files"]] == [key]
    again = Pipeline(settings)
    again.open(warm=False)  # starts again, without the lot run the damaged file held
    again.close_offline()


def test_the_cli_refuses_while_an_instance_holds_the_data_dir(tmp_path):
    pipeline = _pipeline(tmp_path)
    try:
        config = write_config(pipeline.settings, tmp_path / "fabtier.toml")
        result = fabtier_cli("lake", "verify", "--config", str(config), check=False)
        assert result.returncode == 2 and "verify` job" in result.stderr and "Traceback" not in result.stderr
    finally:
        pipeline.close_offline()


def test_health_is_degraded_while_a_damaged_file_is_set_aside(tmp_path, broker):
    import urllib.request

    from fabtier.runner import Instance
    from lifecycle import scheduler

    settings = make_settings(tmp_path, broker, warm={"rollup_every": "1h", "age_out_every": "1h"},
                             lifecycle={"run_every": "1h"}, retrieval={"poll_every": "1h"})
    instance = Instance(settings).start()
    try:
        import time
        now = int(time.time() * 1000)
        mosquitto_pub(broker, "fab/etch-01", _payload(now - 60_000, 20).decode())
        wait_for(lambda: instance.pipeline.metrics_snapshot()["readings_stored"] == 20)
        runner = scheduler.runner_for(instance.pipeline)
        runner.run("seal")
        (key,) = [f.key for f in instance.pipeline.lake.visible_files("raw")]
        _flip_middle(settings.data_dir / "lake" / key)
        assert runner.run(jobs.VERIFY)["damaged"] == 1

        with urllib.request.urlopen(instance.api_url + "/health", timeout=30) as response:
            health = json.loads(response.read())
        assert health["status"] == "degraded"
        (problem,) = [p for p in health["problems"] if p["step"] == "verify"]
        assert f"damaged/{key}" in problem["message"]
    finally:
        instance.stop()


# ---- the pure parts ----------------------------------------------------------------------------
def test_the_latest_audited_write_of_a_key_wins_and_other_records_do_not_count():
    url = "file:///lake"
    lines = [json.dumps(r).encode() for r in (
        {"what": "raw", "target": f"{url}/raw/a", "rows": 1, "bytes": 10, "checksum": "c1", "source": "s"},
        {"what": "raw", "target": f"{url}/raw/a", "rows": 2, "bytes": 20, "checksum": "c2", "source": "s"},
        {"what": "transition", "target": f"{url}/raw/a (GLACIER)", "rows": 2, "bytes": 20, "checksum": ""},
        {"what": "export", "target": "file:///elsewhere/raw/a", "rows": 9, "bytes": 9, "checksum": "x"},
        {"what": "damaged", "target": f"{url}/damaged/raw/b", "rows": 1, "bytes": 1, "checksum": "sha256:0"},
    )] + [b'{"what": "raw", "tar']
    writes = verify.latest_writes(lines, url + "/")
    assert list(writes) == ["raw/a"] and writes["raw/a"].checksum == "c2" and writes["raw/a"].rows == 2


def test_due_and_judge():
    writes = {"k": verify.Written("k", "raw", 3, 100, "c", "s")}
    seen = {"k": verify.Seen(100, 5, "c"), "old": verify.Seen(1, 1, "")}
    files = [("k", 100, 5), ("old", 1, 1), ("new", 7, 7)]
    assert verify.due(files, seen, writes, full=False) == ["new"]
    assert verify.due(files, seen, writes, full=True) == ["k", "old", "new"]
    # Judged against another write than the one recorded now (a record that came later): again.
    assert verify.due(files, seen, {**writes, "old": verify.Written("old", "compact", 1, 1, "z", "")},
                      full=False) == ["old", "new"]
    columns = ("machine", "sensor", "ts", "value")
    good = verify.Readback(100, 3, columns, "c")
    assert verify.judge("raw", writes["k"], good) is None
    assert verify.judge("raw", None, verify.Readback(5, error="bad magic")).startswith("it does not read")
    assert "2 rows where the audit trail records 3" in verify.judge("raw", writes["k"],
                                                                    verify.Readback(90, 2, columns, "d"))
    assert "columns" in verify.judge("raw", None, verify.Readback(9, 1, ("x",), "e"))
    agg = verify.Written("a", "agg_1m", 5, 1, "c", "")
    agg_columns = tuple(verify._COLUMNS["agg_1m"])
    assert verify.judge("agg_1m", agg, verify.Readback(1, 9, agg_columns, "")) is None
    assert verify.judge("agg_1m", agg, verify.Readback(1, 4, agg_columns, "")) is not None
