"""The `fabtier` command line (CONTRACT.md section 5). User mistakes print one clear line
and exit 2; failures of the machine print one line and exit 1; no traceback reaches a user."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from core.errors import FabtierError, UserError

log = logging.getLogger("fabtier")


def _settings(args: argparse.Namespace):
    from fabtier.config import load_settings
    return load_settings(getattr(args, "config", None))


def cmd_sql(args: argparse.Namespace) -> int:
    from analytics.output import render
    from fabtier.reader import answer
    result = answer(_settings(args), args.statement, archived=args.archived)
    print(render(result.table, args.format))
    if result.left_out is not None:
        print(f"fabtier: note: {result.left_out.notice()}", file=sys.stderr)
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from fabtier.reader import run_lifecycle
    now_ms = _parse_now(args.now) if args.now else None
    reports = run_lifecycle(_settings(args), now_ms)
    for report in reports:
        print(json.dumps(report))
    failed = [str(r.get("job")) for r in reports if "error" in r]
    if failed:
        print(f"fabtier: {len(failed)} tiering job(s) failed: {', '.join(failed)} (the error is in its "
              "line above and in the log; the data stays where it was)", file=sys.stderr)
        return 1
    return 0


def _parse_now(text: str) -> int:
    """--now as epoch ms: an ISO-8601 time with a UTC offset (or Z), or a date (UTC midnight)."""
    import datetime as dt
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(f"--now {text!r} is not an ISO-8601 time; write e.g. 2026-03-01T12:00:00Z") from None
    if moment.tzinfo is None:
        if "T" in text or " " in text.strip():
            raise UserError(f"--now {text!r} has no UTC offset; add Z or e.g. +01:00")
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def cmd_tiers(args: argparse.Namespace) -> int:
    from fabtier.reader import tiers
    result = tiers(_settings(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(tiers_table(result))
    return 0


def _usd(amount: float) -> str:
    if amount == 0:
        return "0"
    return "< 0.0001" if amount < 0.0001 else f"{amount:,.4f}"


def tiers_table(result: dict) -> str:
    """`fabtier tiers` for a person: grouped bytes, costs to the hundredth of a cent."""
    import pyarrow as pa

    from analytics.output import render

    def when(ms: int | None) -> object:
        return pa.scalar(ms, pa.timestamp("ms", tz="UTC")).as_py() if ms is not None else None

    table = pa.Table.from_pylist([{
        "tier": r["tier"], "class": r["storage_class"], "rows": f"{r['rows']:,}", "bytes": f"{r['bytes']:,}",
        "oldest": when(r["oldest_ms"]), "newest": when(r["newest_ms"]), "usd_month": _usd(r["usd_per_month"]),
    } for r in result["tiers"]])
    return (render(table, "table") + f"\nestimated total: {_usd(result['total_usd_per_month'])} USD a month; "
            f"prices: {result['prices_as_of']}")


def cmd_run(args: argparse.Namespace) -> int:
    # malloc's settings before the pipeline's imports and threads (fabtier.allocator)
    from fabtier.allocator import tune_allocator
    tune_allocator()
    from fabtier.runner import Instance, install_stop_signals, wait_until_stopped
    settings = _settings(args)
    stop = threading.Event()
    install_stop_signals(stop)
    instance = Instance(settings).start(stop=stop, freeze_gc=True)
    if instance.pipeline.ready:
        print(f"fabtier running: API {instance.api_url}, data in {settings.data_dir}, lake {settings.store_url}",
              flush=True)
    try:
        wait_until_stopped(instance, stop, args.seconds)
    finally:
        instance.stop()
    if instance.pipeline.failure:
        raise FabtierError(f"ingestion stopped: {instance.pipeline.failure}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulator import run_simulator
    stop = threading.Event()
    from fabtier.runner import install_stop_signals
    install_stop_signals(stop)
    stats = run_simulator(broker_url=args.broker, machines=args.machines, sensors=args.sensors,
                          rate_hz=args.rate_hz, batch=args.batch, seconds=args.seconds, seed=args.seed,
                          topic_root=args.topic_root, ctx_root=args.ctx_root, stop=stop)
    print(json.dumps({"messages": stats.messages, "readings": stats.readings,
                      "context_events": stats.context_events, "seconds": round(stats.seconds, 3),
                      "readings_per_s": round(stats.readings / stats.seconds) if stats.seconds else 0}))
    return 0


# Per benchmark, the load when no flag says otherwise. The alerts bench paces the simulator
# in real time in its own process, so its default is what this machine sustains today.
_BENCH_DEFAULTS: dict[str, dict[str, int | float | str]] = {
    "ingest": {"seconds": 10.0, "machines": 40, "sensors": 50, "rate_hz": 500.0, "batch": 500},
    "alerts": {"seconds": 10.0, "machines": 8, "sensors": 10, "rate_hz": 250.0, "batch": 500,
               "seal_every": "10s"},
    "cold": {"seconds": 7200.0, "machines": 3, "sensors": 4, "rate_hz": 100.0, "seal_every": "1m", "repeat": 3},
    "query": {"machines": 3, "sensors": 4, "rate_hz": 0.05, "seal_every": "30m", "repeat": 5},
    "seal": {"seconds": 10.0, "machines": 40, "sensors": 100, "rate_hz": 250.0},
    "sql": {"seconds": 20.0, "machines": 1000, "sensors": 100, "rate_hz": 10.0, "repeat": 30},
}


def cmd_bench(args: argparse.Namespace) -> int:
    for key, value in _BENCH_DEFAULTS.get(args.which, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.which == "soak":
        from fabtier.bench.soak import main as soak_main
        return soak_main(minutes=args.minutes, rate=args.rate, feeders=args.feeders, sensors=args.sensors or 250,
                         hot_budget=0 if args.default_budgets else 512 << 20,
                         max_unsealed=0 if args.default_budgets else 512 << 20, busy=args.busy,
                         as_json=args.json)
    if args.which == "cold":
        return cmd_bench_cold(args)
    if args.which == "seal":
        from fabtier.bench.seal import SealBench
        from fabtier.bench.seal import main as seal_main
        if args.seconds <= 0 or not _fleet_ok(args):
            raise UserError("bench seal: give --seconds > 0, --machines and --sensors >= 1, --rate-hz in (0, 1000]")
        return seal_main(SealBench(machines=args.machines, sensors=args.sensors, rate_hz=args.rate_hz,
                                   seconds=args.seconds, seed=args.seed), args.json)
    if args.which == "sql":
        from fabtier.bench.sqlbusy import SqlBench
        from fabtier.bench.sqlbusy import main as sql_main
        if args.seconds <= 0 or not _fleet_ok(args) or args.repeat < 1:
            raise UserError("bench sql: give --seconds > 0, --machines and --sensors >= 1, --rate-hz in (0, 1000], "
                            "--repeat >= 1")
        return sql_main(SqlBench(machines=args.machines, sensors=args.sensors, rate_hz=args.rate_hz,
                                 seconds=args.seconds, repeat=args.repeat, seed=args.seed), args.json)
    if args.which == "query":
        return cmd_bench_query(args)
    if args.which == "dashboard":
        from dashboard.bench import run as run_dashboard_bench
        return run_dashboard_bench(seconds=args.seconds, machines=args.machines, sensors=args.sensors,
                                   rate_hz=args.rate_hz, clients=args.clients, as_json=args.json)
    if args.which == "alerts":
        from fabtier.bench.alerts import run
        return run(seconds=args.seconds, machines=args.machines, sensors=args.sensors, rate_hz=args.rate_hz,
                   batch=args.batch, excursions_per_s=args.excursions_per_s, seal_every=args.seal_every,
                   as_json=args.json)
    if args.which == "ingest":
        from fabtier.bench import ingest, ingestmatrix
        rates = ingestmatrix.parse_rates(args.queries_per_s)
        bench = ingest.IngestBench(seconds=args.seconds, machines=args.machines, sensors=args.sensors,
                                   rate_hz=args.rate_hz, batch=args.batch, live=args.live, seed=args.seed,
                                   queries_per_s=rates[0])
        if args.processes < 1:
            raise UserError("--processes must be 1 or more")
        if args.rounds < 1:
            raise UserError("--rounds must be 1 or more")
        if args.scales is not None or len(rates) > 1 or args.rounds > 1:
            if args.live or args.processes > 1:
                raise UserError("--scales, several --queries-per-s and --rounds compare maximum rates of one "
                                "process; leave out --live and --processes")
            scales = ingestmatrix.parse_scales(args.scales) if args.scales is not None else [
                ingestmatrix.Scale(bench.machines, bench.sensors, bench.rate_hz)]
            result = ingestmatrix.run(bench, scales, rates, args.rounds,
                                      progress=lambda line: print(line, flush=True))
            print(ingestmatrix.report(result), flush=True)
        elif args.processes > 1:
            if args.live:
                raise UserError("--processes measures the maximum rate; leave out --live")
            from fabtier.bench import scaleout
            result = scaleout.run(bench, args.processes)
            print(scaleout.report(result), flush=True)
        else:
            result = ingest.run(bench)
            print(ingest.report(result), flush=True)
    else:
        raise UserError(f"fabtier bench {args.which} is not built yet; available: ingest, alerts, cold, query, seal")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fabtier.demo import run_demo
    return run_demo(data_dir=Path(args.data_dir), seconds=args.seconds, port=args.port,
                    machines=args.machines, sensors=args.sensors, rate_hz=args.rate_hz, seed=args.seed)


def _fleet_ok(args: argparse.Namespace) -> bool:
    """A simulated fleet the benches can build: --machines and --sensors >= 1, --rate-hz in (0, 1000]."""
    return args.machines >= 1 and args.sensors >= 1 and 0 < args.rate_hz <= 1000


def cmd_bench_cold(args: argparse.Namespace) -> int:
    from core.units import parse_duration
    from fabtier.bench.cold import main as bench_main
    try:
        text = str(args.seal_every).strip()
        args.seal_every = parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError:
        raise UserError(f"bench cold: --seal-every {args.seal_every!r} is not a duration; e.g. 1m") from None
    if args.seconds <= 0 or not _fleet_ok(args) or not 0 <= args.jitter < 1 or args.seal_every <= 0 or args.repeat < 1:
        raise UserError("bench cold: give --seconds > 0, --machines and --sensors >= 1, --rate-hz in (0, 1000], "
                        "--jitter in [0, 1), --seal-every > 0, --repeat >= 1")
    return bench_main(args)


def cmd_bench_query(args: argparse.Namespace) -> int:
    from core.units import parse_duration
    from fabtier.bench.query import main as bench_main
    try:
        days = [float(d) for d in str(args.days).split(",") if d.strip()]
        text = str(args.seal_every).strip()
        seal_every = parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError:
        raise UserError(f"bench query: --days {args.days!r} must be numbers separated by commas (e.g. 1,7,30), "
                        f"--seal-every {args.seal_every!r} a duration (e.g. 30m)") from None
    if not days or min(days) <= 0 or not _fleet_ok(args) or seal_every <= 0 or args.repeat < 1:
        raise UserError("bench query: give --days > 0, --machines and --sensors >= 1, --rate-hz in (0, 1000], "
                        "--seal-every > 0, --repeat >= 1")
    return bench_main(days=days, repeat=args.repeat, seed=args.seed, as_json=args.json, machines=args.machines,
                      sensors=args.sensors, rate_hz=args.rate_hz, seal_every_s=seal_every)


def cmd_lake_verify(args: argparse.Namespace) -> int:
    """`fabtier lake verify`: on the data directory, with no instance running (a running one
    verifies on its own schedule, the `verify` job). Exit 1 while damaged files are set aside.

    It opens no pipeline: a damaged context or alerts file stops a pipeline's start (its state
    is recovered from them), and this is the command that sets such a file aside. Files of log
    segments left by a crash are not read (their rows are still in the log)."""
    from core.clock import SystemClock
    from fabtier.datadir import DataDirLock, is_locked
    from fabtier.reader import instance_running
    from ingest.wal import segment_numbers
    from lifecycle import verify
    from lifecycle.audit import AuditLog
    from tiers.store import settings_store
    settings = _settings(args)
    if instance_running(settings) or is_locked(settings.data_dir):
        raise UserError(f"a fabtier instance holds {settings.data_dir}: it verifies the lake itself every "
                        "[lifecycle] run_every (the `verify` job; its last report is in /health and in "
                        "`fabtier sql \"SELECT * FROM job_runs WHERE job = 'verify'\"`); stop it to run "
                        "`fabtier lake verify` by hand")
    lock = DataDirLock(settings.data_dir, exclusive=True)  # no pipeline starts meanwhile
    try:
        wal_dir = settings.data_dir / "wal"
        report = verify.verify_lake(
            store=settings_store(settings), audit=AuditLog(settings.data_dir / "audit" / "moves.jsonl"),
            state_dir=settings.data_dir / "lifecycle", writer_id=settings.cold.writer_id,
            hidden_segments=lambda: set(segment_numbers(wal_dir)), lock=threading.Lock(),
            at_ms=SystemClock().now_ms(), full=args.full).public()
    finally:
        lock.release()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"verified {report['checked']} file(s), {report['bytes_read']:,} bytes "
              f"({report['without_record']} without an audit record: parsing and columns only); "
              f"{report['unchanged']} unchanged since they were verified")
        for damaged in report["damaged_files"]:
            print(f"DAMAGED {damaged['key']}: {damaged['problem']}; moved to {damaged['moved_to']}; lost: "
                  f"{damaged['lost']}; {damaged['origin']}")
    if "error" in report:
        print(f"fabtier: {report['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_cold(args: argparse.Namespace) -> int:
    from fabtier.coldadmin import run_cold_command
    return run_cold_command(_settings(args), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabtier", description="IoT data tiering for fab sensor data.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="local broker, simulator and pipeline, all on this machine")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    demo.add_argument("--data-dir", default="./fabtier-demo", help="where all data goes")
    demo.add_argument("--port", type=int, default=8080, help="port of the HTTP API (0: any free port)")
    demo.add_argument("--machines", type=int, default=6)
    demo.add_argument("--sensors", type=int, default=8, help="sensors per machine")
    demo.add_argument("--rate-hz", type=float, default=20.0)
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="the pipeline, scheduler and HTTP API")
    run.add_argument("--config", help="TOML file (default ./fabtier.toml, else built-in defaults)")
    run.add_argument("--seconds", type=float, default=None, help="stop after this long")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="the fab simulator as a load generator",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sim.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the broker to publish to")
    sim.add_argument("--machines", type=int, default=4, help="machines of the fab")
    sim.add_argument("--sensors", type=int, default=5, help="sensors per machine")
    sim.add_argument("--rate-hz", type=float, default=10.0, help="readings per second of each sensor")
    sim.add_argument("--batch", type=int, default=100, help="readings per message (1: single-reading topics)")
    sim.add_argument("--seconds", type=float, default=None, help="stop after this long (None: until Ctrl-C)")
    sim.add_argument("--seed", type=int, default=0, help="the model's seed: same seed, same readings")
    sim.add_argument("--topic-root", default="fab", help="readings go to TOPIC_ROOT/machine")
    sim.add_argument("--ctx-root", default="fab-ctx", help="lot context goes to CTX_ROOT/machine")
    sim.set_defaults(func=cmd_simulate)

    sql = sub.add_parser("sql", help="read-only SQL over every tier")
    sql.add_argument("statement")
    sql.add_argument("--config")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--archived", choices=["notice", "error"], default="notice",
                     help="when archived objects hold readings the answer cannot read: print the answer "
                          "and a notice on stderr (default), or no answer and exit 1")
    sql.set_defaults(func=cmd_sql)

    bench = sub.add_parser("bench", help="benchmarks, each against a baseline measured in the same run")
    bench.add_argument("which", choices=["ingest", "alerts", "query", "cold", "dashboard", "soak", "seal", "sql"])
    bench.add_argument("--minutes", type=float, default=3.0, help="(soak) minutes of load")
    bench.add_argument("--rate", type=float, default=500_000.0, help="(soak) readings/s offered")
    bench.add_argument("--feeders", type=int, default=8, help="(soak) mosquitto_pub feeders, one machine each")
    bench.add_argument("--busy", type=int, default=0,
                       help="(soak) processes of other work beside the instance, each keeping a core busy")
    bench.add_argument("--default-budgets", action="store_true",
                       help="(soak) the default [hot] memory_budget and [ingest] max_unsealed, not 512 MiB each")
    # None: the benchmark's own default (_BENCH_DEFAULTS).
    bench.add_argument("--seconds", type=float, default=None,
                       help="seconds of simulated data (ingest: 10, cold: 7200); of injected excursions (alerts: 10)")
    bench.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    bench.add_argument("--machines", type=int, default=None, help="default: ingest 40, alerts 8, cold 3")
    bench.add_argument("--sensors", type=int, default=None,
                       help="sensors per machine; default: ingest 50, alerts 10, cold 4")
    bench.add_argument("--rate-hz", type=float, default=None, help="default: ingest 500, alerts 250, cold 100")
    bench.add_argument("--batch", type=int, default=None,
                       help="readings per message (1: single readings); default 500")
    bench.add_argument("--excursions-per-s", type=float, default=20.0, help="(alerts) excursions injected per second")
    bench.add_argument("--seal-every", default=None,
                       help="(alerts) [cold] seal_every of the instance under test, default 10s; "
                            "(cold) data per sealed segment, default 1m")
    bench.add_argument("--jitter", type=float, default=0.3, help="(cold) timestamp jitter, fraction of the period")
    bench.add_argument("--repeat", type=int, default=None,
                       help="(cold, query, sql) runs per query (the median is printed); default: cold 3, query 5, sql 30")
    bench.add_argument("--days", default="1,7,30", help="(query) simulated days of each lake, e.g. 1,7,30")
    bench.add_argument("--live", action="store_true", help="pace the simulator in real time instead")
    bench.add_argument("--processes", type=int, default=1,
                       help="(ingest) fabtier processes on one MQTT shared subscription, one lake")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--queries-per-s", default="0",
                       help="(ingest) SQL statements a second through the API while ingesting "
                            "(SELECT count(*) FROM readings); their latency is reported. A list (0,5) "
                            "runs each and compares them")
    bench.add_argument("--scales", default=None,
                       help="(ingest) fleets to compare, MACHINESxSENSORSxHZ, comma-separated "
                            "(e.g. 40x100x250,1000x100x10); each runs with every --queries-per-s")
    bench.add_argument("--rounds", type=int, default=1,
                       help="(ingest) runs of every --scales/--queries-per-s cell, in alternating order; "
                            "medians and within-round ratios are reported")
    bench.add_argument("--clients", type=int, default=5, help="(dashboard) clients streaming one machine's page")
    bench.set_defaults(func=cmd_bench)

    tiers = sub.add_parser("tiers", help="rows, bytes, oldest, newest and monthly cost per tier")
    tiers.add_argument("--config")
    tiers.add_argument("--json", action="store_true", help="one JSON object")
    tiers.set_defaults(func=cmd_tiers)

    lifecycle = sub.add_parser("lifecycle", help="tiering jobs")
    lifecycle_sub = lifecycle.add_subparsers(dest="action", required=True)
    lifecycle_run = lifecycle_sub.add_parser("run", help="run every due tiering job once, now")
    lifecycle_run.add_argument("--config")
    lifecycle_run.add_argument("--now", help="evaluate ages as of this ISO time")
    lifecycle_run.set_defaults(func=cmd_lifecycle)

    lake = sub.add_parser("lake", help="the Parquet lake: verify its files against the audit trail")
    lake_sub = lake.add_subparsers(dest="action", required=True)
    lake_verify = lake_sub.add_parser(
        "verify", help="read back lake files new or changed since the last verify and judge them against the "
                       "audit trail; set damaged ones aside under damaged/ (exit 1 while any are there)")
    lake_verify.add_argument("--config")
    lake_verify.add_argument("--full", action="store_true", help="read every file, not only new or changed ones")
    lake_verify.add_argument("--json", action="store_true", help="one JSON object")
    lake_verify.set_defaults(func=cmd_lake_verify)

    cold = sub.add_parser("cold", help="the cold store: S3 bucket setup, IAM policy, lifecycle document")
    cold_sub = cold.add_subparsers(dest="action", required=True)
    for name, help_text in (("setup", "create and secure the bucket, apply the lifecycle, register the Glue table"),
                            ("iam-policy", "print the least-privilege IAM policy fabtier needs"),
                            ("lifecycle", "print the lifecycle policy (and the S3 document for an S3 store)")):
        action = cold_sub.add_parser(name, help=help_text)
        action.add_argument("--config")
        if name == "iam-policy":
            action.add_argument("--account", default="*", help="AWS account id for the Glue ARNs")
        if name == "setup":
            action.add_argument("--require-tls", action="store_true",
                                help="refuse requests without TLS in the bucket policy even when the endpoint "
                                     "is plain http:// (which then locks fabtier itself out)")
        action.set_defaults(func=cmd_cold)

    from fabtier.retrieval_cli import add_parser as add_retrieve_parser
    add_retrieve_parser(sub, parse_time=_parse_now)
    from dashboard.cli import add_parser as add_dashboard_parser
    add_dashboard_parser(sub, settings_of=_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"fabtier: {exc}", file=sys.stderr)
        return 2
    except FabtierError as exc:
        print(f"fabtier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
