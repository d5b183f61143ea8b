"""Every kind of data through every lifecycle age, on the local store and on S3 (moto's
server): raw readings go to the archive classes, while aggregates, lot context, alerts and
quarantine stay readable (at most STANDARD_IA), so `alerts`, `lot_runs`, `readings_1m` and
`quarantine` answer exactly as before, and `fabtier tiers` shows where each kind went.

On S3, moto does not run lifecycle rules: the test checks the document fabtier sends (one
rule set per prefix) and then makes the transitions those rules would make, with the store's
own `set_storage_class`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import time
from pathlib import Path

from core.clock import ManualClock
from fabtier.broker import free_port
from fabtier.config import load_settings
from fabtier.pipeline import Pipeline
from lifecycle import policy
from tests.conftest import fabtier_cli
from tiers.s3bucket import lifecycle_rules
from tiers.store import S3Store

HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_699_956_000_000  # 2023-11-14T10:00Z: older than the warm retention, so minutes reach agg_1m
KINDS = ("raw", "agg_1m", "context", "alerts", "quarantine")
QUERIES = {
    "alerts": "SELECT machine, sensor, epoch_ms(ts) AS ts, value, kind, rule, state FROM alerts ORDER BY ALL",
    "lot_runs": "SELECT machine, lot, wafer, recipe, epoch_ms(start_ts) AS s, epoch_ms(end_ts) AS e "
                "FROM lot_runs ORDER BY ALL",
    "readings_1m": 'SELECT machine, sensor, epoch_ms(minute) AS m, n, min, max, avg, "first", "last" '
                   "FROM readings_1m ORDER BY ALL",
    "quarantine": "SELECT epoch_ms(received_at) AS r, topic, reason, length(payload) AS size FROM quarantine ORDER BY ALL",
}


def _config(tmp_path: Path, store: str = "", endpoint: str = "") -> Path:
    cold = f'store = "{store}"\nendpoint_url = "{endpoint}"\n' if store else ""
    path = tmp_path / "fabtier.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[api]\nport = {free_port()}\n'
        f'[cold]\nseal_every = "1h"\nseal_in_child = false\n{cold}'
        '[warm]\nretention = "1d"\n'
        # Short enough to pass every age within one test run (with --now), long enough for
        # STANDARD_IA (S3 allows it from day 30); expiry far beyond.
        '[lifecycle]\nglacier_after = "31d"\ndeep_archive_after = "62d"\nexpire_after = "3650d"\n'
        'min_object_size = 0\ncost_guard = false\n'
        '[[alerts.rules]]\nname = "overtemp"\nsensor = "*/temp"\nhigh = 80.0\n', encoding="utf-8")
    return path


def _ingest(config: Path, start: int, hours: int) -> None:
    """Readings (two machines, two sensors), 8 excursions over 80 (alerts), 5 lot runs and
    quarantined messages, some large (a quarantine file over 128 KiB, which may go to IA)."""
    settings = load_settings(config, env={})
    pipeline = Pipeline(settings, clock=ManualClock(start + hours * HOUR + 60_000))
    pipeline.open(warm=False)
    rng = random.Random(15)
    messages = []
    for machine_no, machine in enumerate(("etch-01", "etch-02")):
        for hour in range(hours):
            ts = [start + hour * HOUR + i * 30_000 for i in range(120)]
            # An excursion of three readings every 45 minutes: 3 hours give 4 raised alerts a machine
            temp = [85.0 + machine_no if (t - start) % (45 * 60_000) < 90_000 else 20.0 + (i % 7) / 4
                    for i, t in enumerate(ts)]
            pressure = [round(1.5 + rng.random(), 3) for _ in ts]
            messages.append((f"fab/{machine}", {"ts": ts + ts, "sensor": ["temp"] * 120 + ["pressure"] * 120,
                                                "v": temp + pressure}))
    for run in range(5):
        machine = ("etch-01", "etch-02")[run % 2]
        begin = start + run * 30 * 60_000
        messages.append((f"fab-ctx/{machine}", {"ts": begin, "event": "start", "lot": f"L{run}", "wafer": "W01",
                                                "recipe": "ETCH-A"}))
        messages.append((f"fab-ctx/{machine}", {"ts": begin + 20 * 60_000, "event": "end", "lot": f"L{run}",
                                                "wafer": "W01", "recipe": "ETCH-A"}))
    raw = [(topic, json.dumps(body).encode()) for topic, body in messages]
    raw += [("fab/etch-01/temp", b'{"ts": 1, "v": "hot"}'), ("fab/etch-02", b"[]")]
    # Not JSON, and not compressible: 64 KiB of each is kept
    raw += [("fab/etch-01/temp", base64.b64encode(rng.randbytes(70_000))) for _ in range(4)]
    pipeline.process([(topic, payload, 0, 0) for topic, payload in raw])
    pipeline.wal.commit()
    pipeline.seal()
    pipeline.close_offline()


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lifecycle_run(config: Path, now_ms: int | None = None) -> dict:
    args = ["lifecycle", "run", "--config", str(config)] + (["--now", _iso(now_ms)] if now_ms else [])
    result = fabtier_cli(*args, check=False)
    reports = {r["job"]: r for r in map(json.loads, result.stdout.splitlines())}
    failed = {job: r["error"] for job, r in reports.items() if "error" in r}
    assert not failed and result.returncode == 0, (failed, result.stderr[-2000:])
    return reports


def _answers(config: Path) -> dict:
    return {name: json.loads(fabtier_cli("sql", sql, "--config", str(config), "--format", "json").stdout)
            for name, sql in QUERIES.items()}


def _readings(config: Path, *, archived: bool = False) -> int:
    """`readings` counted through the CLI; an answer that leaves archived objects out says so."""
    out = fabtier_cli("sql", "SELECT count(*) AS n FROM readings", "--config", str(config), "--format", "json")
    assert ("leaves out" in out.stderr and "fabtier retrieve --from" in out.stderr) == archived, out.stderr
    return json.loads(out.stdout)[0]["n"]


def _tiers(config: Path) -> dict:
    out = fabtier_cli("tiers", "--config", str(config), "--json").stdout
    return {t["tier"]: t for t in json.loads(out.splitlines()[-1])["tiers"]}


def _before(config: Path) -> dict:
    _ingest(config, T0, 3)
    _lifecycle_run(config)  # seal, roll up, age out to agg_1m, compact: nothing is old enough to move
    before = _answers(config)
    assert sum(r["state"] == "raised" for r in before["alerts"]) == 8
    assert len(before["lot_runs"]) == 5 and len(before["quarantine"]) == 6
    assert sum(r["n"] for r in before["readings_1m"]) == 2 * 3 * 240 == _readings(config)
    return before


def _after(config: Path, before: dict, local: bool) -> None:
    assert _answers(config) == before
    # Raw readings are archived: not readable until restored, as on S3, and the answer says so.
    assert _readings(config, archived=True) == 0
    tiers = _tiers(config)
    where = ", recorded locally" if local else ""
    assert tiers[f"frozen raw (DEEP_ARCHIVE{where})"]["bytes"] > 0 and tiers["cold raw"]["rows"] == 0
    if local:
        assert tiers[f"frozen raw (DEEP_ARCHIVE{where})"]["rows"] == 2 * 3 * 240
    # Every other kind is readable where it is, and fabtier tiers says where that is.
    assert tiers["cold alerts"]["rows"] == len(before["alerts"])
    assert tiers["cold context"]["rows"] == 10
    assert tiers["cold agg_1m"]["rows"] == len(before["readings_1m"])
    assert tiers[f"cold quarantine (STANDARD_IA{where})"]["rows"] >= 1
    assert sum(t["rows"] for name, t in tiers.items() if name.startswith("cold quarantine")) == 6
    assert not [name for name in tiers if name.startswith("frozen") and "raw" not in name]


def _late_minutes_reach_an_aged_agg_file(config: Path, before: dict, now_ms: int) -> None:
    """Minutes of a later hour of the same day move into that day's agg_1m file after it has
    passed every lifecycle age: age_out must still read it (it failed on an archived one)."""
    _ingest(config, T0 + 5 * HOUR, 1)
    reports = _lifecycle_run(config, now_ms)
    assert reports["rollup"]["minutes"] == 2 * 2 * 60 and reports["age_out"]["minutes"] == 2 * 2 * 60
    answers = _answers(config)
    assert len(answers["readings_1m"]) == len(before["readings_1m"]) + 240
    assert [r for r in answers["readings_1m"] if r["m"] < T0 + 5 * HOUR] == before["readings_1m"]


def test_every_kind_through_every_age_on_the_local_store(tmp_path):
    config = _config(tmp_path)
    before = _before(config)
    # Far on: past glacier_after and deep_archive_after, before expire_after.
    now = int(time.time() * 1000) + 70 * DAY
    reports = _lifecycle_run(config, now)
    assert reports["lifecycle"]["transitions"] > 0 and reports["lifecycle"]["expiries"] == 0
    _after(config, before, local=True)
    lake = tmp_path / "data" / "lake"
    classes = json.loads((lake / ".storage-classes.json").read_text())
    assert {key.split("/")[0] for key, cls in classes.items() if cls == "DEEP_ARCHIVE"} == {"raw"}
    assert {key.split("/")[0] for key, cls in classes.items() if cls != "DEEP_ARCHIVE"} == {"quarantine"}
    assert set(classes.values()) == {"DEEP_ARCHIVE", "STANDARD_IA"}
    _late_minutes_reach_an_aged_agg_file(config, before, now + DAY)
    # At expiry every kind goes (compliance retention is one for all), nothing else does.
    _lifecycle_run(config, int(time.time() * 1000) + 3651 * DAY)
    # Nothing but the catalog's note that it was built; no manifest of a day that is gone.
    left = [p.relative_to(lake).as_posix() for p in lake.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(left) == sorted(f"_catalog/{kind}/_built.json" for kind in KINDS), left
    assert (lake / ".storage-classes.json").exists()


def _s3_would(document: dict, key: str, size: int, age_days: int) -> str | None:
    """What S3 does with one object of this age under these rules: its class, "expire", or
    None (nothing)."""
    order = ["STANDARD", "STANDARD_IA", "GLACIER", "DEEP_ARCHIVE"]
    target = None
    for rule in document["Rules"]:
        condition = rule["Filter"].get("And", rule["Filter"])
        if not key.startswith(condition.get("Prefix", "")) or size <= condition.get("ObjectSizeGreaterThan", -1):
            continue
        if rule.get("Expiration", {}).get("Days", age_days + 1) <= age_days:
            return "expire"
        for t in rule.get("Transitions", []):
            if t["Days"] <= age_days and (target is None or order.index(t["StorageClass"]) > order.index(target)):
                target = t["StorageClass"]
    return target


def test_every_kind_through_every_age_on_s3(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    config = _config(tmp_path, f"s3://{bucket}/lake", endpoint)
    before = _before(config)
    _lifecycle_run(config, int(time.time() * 1000) + 70 * DAY)  # keeps the bucket's rules in sync

    store = S3Store(bucket, "lake", endpoint_url=endpoint)
    sent = policy.s3_document(policy.policy_from_settings(load_settings(config, env={}).lifecycle, prefix="lake/"))
    # One rule set per kind, each filtered by its prefix under the store's own prefix
    prefixes = {r["Filter"].get("And", r["Filter"])["Prefix"] for r in sent["Rules"]}
    assert prefixes == {f"lake/{kind}/" for kind in KINDS}
    for rule in sent["Rules"]:
        classes = {t["StorageClass"] for t in rule.get("Transitions", [])}
        if rule["Filter"].get("And", rule["Filter"])["Prefix"] == "lake/raw/":
            assert classes <= {"GLACIER", "DEEP_ARCHIVE"}
        else:
            assert classes <= {"STANDARD_IA"}
    stored = lifecycle_rules(store)  # moto keeps the rules but drops size filters
    assert sorted((r["ID"], r["Filter"].get("And", r["Filter"])["Prefix"]) for r in stored) == sorted(
        (r["ID"], r["Filter"].get("And", r["Filter"])["Prefix"]) for r in sent["Rules"])

    # What S3 would do 70 days on, done by hand.
    moved: dict[str, str] = {}
    for obj in store.objects(""):
        action = _s3_would(sent, f"lake/{obj.key}", obj.size, 70)
        assert action != "expire"
        if action is not None:
            store.set_storage_class(obj.key, action)
            moved[obj.key] = action
    assert {k.split("/")[0] for k, c in moved.items() if c == "DEEP_ARCHIVE"} == {"raw"}
    assert {k.split("/")[0] for k, c in moved.items() if c == "STANDARD_IA"} == {"quarantine"}
    _after(config, before, local=False)

