"""`fabtier retrieve` (CONTRACT.md section 5): ask for archived raw data back, follow a job,
list the jobs.

    fabtier retrieve --from T --to T [--machine M] [--sensor S] [--speed expedited|standard|bulk] [--json]
    fabtier retrieve --status ID [--json] [--export DEST]
    fabtier retrieve --list [--json]

T is an ISO-8601 time with an offset (`2026-03-01T12:00:00Z`), or a date (UTC midnight), read
by the parser of `fabtier lifecycle run --now`; the range is [from, to). Through the running
instance's HTTP API when one serves this data directory (its scheduler follows the job and
sends the notices), else on the data directory itself: the job is planned, stored and its
restores asked for here, and `--status` and `--list` look at the store once more (the notices
then wait for the next instance that runs). `--json` prints one JSON object (`--list`: one array).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.clock import SystemClock
from core.errors import FabtierError, UserError
from core.records import SPEEDS
from core.settings import Settings

if TYPE_CHECKING:  # imported where used: building the parser for any command stays light
    from lifecycle.retrieval import Request

_EXAMPLE = "e.g. fabtier retrieve --from 2026-03-01T00:00:00Z --to 2026-03-01T06:00:00Z"


def add_parser(sub: argparse._SubParsersAction, *, parse_time: Callable[[str], int]) -> None:
    """Adds `retrieve` to the `fabtier` subcommands. `parse_time` is the `--now` parser of
    fabtier.cli (handed over, not imported: that module imports this one)."""
    retrieve = sub.add_parser("retrieve", help="bring archived raw data back (asynchronous restore jobs)",
                              description="Restore the archived raw objects of a time range, follow a job, "
                                          "or list the jobs.")
    retrieve.add_argument("--from", dest="from_", metavar="T", help="start, ISO-8601 with an offset (inclusive)")
    retrieve.add_argument("--to", metavar="T", help="end, ISO-8601 with an offset (exclusive)")
    retrieve.add_argument("--machine", help="only this machine's readings are wanted (does not prune: the lake "
                                            "is partitioned by hour)")
    retrieve.add_argument("--sensor", help="only this sensor's readings are wanted (does not prune either)")
    retrieve.add_argument("--speed", help="expedited, standard or bulk (S3's retrieval tiers; default "
                                          "[retrieval] speed)")
    retrieve.add_argument("--status", metavar="ID", help="the state of one job")
    retrieve.add_argument("--list", action="store_true", help="every job, oldest first")
    retrieve.add_argument("--json", action="store_true", help="one JSON object (--list: one array)")
    retrieve.add_argument("--export", metavar="DEST",
                          help="with --status ID of a ready job: write its range as a Parquet dataset with "
                               "the lake's layout to DEST (a directory, file:///dir or s3://bucket/prefix)")
    retrieve.add_argument("--config")
    retrieve.set_defaults(func=cmd_retrieve, parse_time=parse_time)


def _time(parse_time: Callable[[str], int], text: str, flag: str) -> int:
    try:
        return parse_time(text)
    except UserError as exc:
        raise UserError(str(exc).replace("--now", flag, 1)) from None


def _new_request(args: argparse.Namespace, settings: Settings) -> Request:
    from lifecycle import retrieval as rt

    if args.from_ is None or args.to is None:
        raise UserError(f"give both --from and --to (ISO-8601 times with an offset), {_EXAMPLE}")
    speed = args.speed or settings.retrieval.speed
    if speed not in SPEEDS:
        raise UserError(f"--speed {speed!r} is not a retrieval speed; use expedited, standard or bulk")
    from_ms, to_ms = _time(args.parse_time, args.from_, "--from"), _time(args.parse_time, args.to, "--to")
    if to_ms <= from_ms:
        raise UserError(f"--to {args.to} is not after --from {args.from_}: the range is empty")
    for flag, value in (("--machine", args.machine), ("--sensor", args.sensor)):
        if value is not None and not value:
            raise UserError(f"{flag} is empty; leave it out for every one")
    try:
        return rt.check_request(from_ms, to_ms, speed, args.machine, args.sensor)
    except rt.RetrievalError as exc:
        raise UserError(f"--{exc.parameter}: {exc}" if exc.parameter else str(exc)) from None


def _mode(args: argparse.Namespace) -> str:
    modes = [name for name, given in (("create", args.from_ is not None or args.to is not None),
                                      ("status", args.status is not None), ("list", args.list)) if given]
    if len(modes) != 1:
        raise UserError("give --from and --to (a new job), or --status ID, or --list; "
                        f"{_EXAMPLE}" if not modes else "give only one of --from/--to, --status and --list")
    if modes[0] != "create" and (args.machine or args.sensor or args.speed):
        raise UserError("--machine, --sensor and --speed belong to a new job (--from and --to)")
    return modes[0]


def cmd_retrieve(args: argparse.Namespace) -> int:
    from fabtier.config import load_settings
    from fabtier.reader import instance_running

    mode = _mode(args)
    settings = load_settings(args.config)
    request = _new_request(args, settings) if mode == "create" else None
    if instance_running(settings):
        answer = _through_api(settings, mode, request, args.status)
    else:
        answer = _offline(settings, mode, request, args.status)
    if args.export is not None:
        if mode != "status":
            raise UserError("--export goes with --status ID (a ready job); e.g. "
                            "fabtier retrieve --status r-... --export ./training-set")
        answer = {**answer, "export": _export(settings, answer, args.export)}
    if args.json:
        print(json.dumps(answer))
    elif mode == "list":
        for job in answer:
            print(summary(job))
        if not answer:
            print("no retrieval jobs")
    else:
        print(summary(answer))
        if mode == "create" and answer["state"] != "ready":
            print(f"follow it with: fabtier retrieve --status {answer['id']}", file=sys.stderr)
    return 0


def _export(settings: Settings, job: dict, destination: str) -> dict:
    """Copy a ready job's readings to `destination` (lifecycle.export); its figures."""
    from dataclasses import asdict
    from pathlib import Path

    from lifecycle.audit import AuditLog
    from lifecycle.export import export_job
    from tiers.cold import ColdLake
    from tiers.store import open_store, settings_store

    url = destination if "://" in destination else Path(destination).resolve().as_uri()
    if not url.startswith(("file://", "s3://")):
        raise UserError(f"--export {destination!r}: give a directory, file:///dir or s3://bucket/prefix")
    cold = settings.cold
    target = open_store(url, endpoint_url=cold.endpoint_url if url.startswith("s3://") else "",
                        region=cold.region, sse=cold.sse, kms_key_id=cold.kms_key_id)
    lake = ColdLake(settings_store(settings), writer_id=settings.cold.writer_id)
    report = export_job(job, lake=lake, destination=target, audit=AuditLog(settings.data_dir / "audit" / "moves.jsonl"),
                        at_ms=SystemClock().now_ms())
    print(f"exported {report.rows:,} readings in {report.files} file(s), {report.bytes:,} bytes, to "
          f"{report.destination}", file=sys.stderr)
    return asdict(report)


def _body(request: Request) -> bytes:
    return json.dumps({"from": request.from_ms, "to": request.to_ms, "speed": request.speed,
                       "machine": request.machine, "sensor": request.sensor}).encode()


def _through_api(settings: Settings, mode: str, request: Request | None, job_id: str | None):
    from fabtier.reader import _error_of, _request

    if mode == "create":
        assert request is not None
        status, body = _request(settings, "POST", "/retrievals", _body(request))
        expected = 202
    elif mode == "status":
        status, body = _request(settings, "GET", f"/retrievals/{job_id}")
        expected = 200
    else:
        status, body = _request(settings, "GET", "/retrievals")
        expected = 200
    if status == expected:
        return json.loads(body)
    if status in (400, 404):
        raise UserError(_error_of(body))
    raise FabtierError(f"the running fabtier at {settings.api_url} answered {status}: {_error_of(body)}")


def _offline(settings: Settings, mode: str, request: Request | None, job_id: str | None):
    from fabtier.datadir import DataDirLock, is_locked
    from lifecycle import retrievals
    from tiers.cold import ColdLake
    from tiers.store import settings_store

    if is_locked(settings.data_dir):
        raise UserError(f"a fabtier pipeline holds {settings.data_dir} but its API at {settings.api_url} "
                        "does not answer; check [api] host and port in the configuration")
    lock = DataDirLock(settings.data_dir, exclusive=False)
    try:
        jobs = retrievals.JobStore(settings.data_dir)
        clock = SystemClock()
        store = settings_store(settings, clock=clock)
        if mode == "list":  # no instance follows the open jobs: look at the store now
            retrievals.follow(store=store, jobs=jobs, now_ms=clock.now_ms())
            return [job.public() for job in jobs.jobs()]
        if mode == "create":
            assert request is not None
            lake = ColdLake(store, writer_id=settings.cold.writer_id)
            return retrievals.create(settings=settings, lake=lake, jobs=jobs, request=request,
                                     now_ms=clock.now_ms()).public()
        assert job_id is not None
        with jobs.locked():
            job = jobs.get(job_id)
            if not job.state.final:  # no instance follows it: look at the store now
                retrievals.advance(job, store, clock.now_ms(), before_asking=jobs.save)
                jobs.save(job)
        return job.public()
    finally:
        lock.release()


def summary(job: dict) -> str:
    """One line for a person."""
    eta = f", about {_duration(job['eta_s'])} to go" if job["state"] in ("pending", "restoring") else ""
    wanted = "".join(f" {name} {job[name]}" for name in ("machine", "sensor") if job.get(name))
    return (f"{job['id']}: {job['state']}, {len(job['objects'])} archived object(s), {job['bytes']:,} bytes, "
            f"{job['speed']}, {_usd(job['cost_usd'])} USD{eta}; {job['from_iso']} to {job['to_iso']}{wanted}; "
            f"{job['message']}")


def _usd(amount: float) -> str:
    return f"{amount:,.6f}".rstrip("0").rstrip(".") if amount else "0"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
