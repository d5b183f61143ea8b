"""Reads for the command line: through the running instance's API when one answers (so the
hot tier is included), else straight from the durable stores of the data directory."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

import pyarrow as pa

from alerts.service import load_book
from analytics.bounds import minute_bounds, ts_bounds
from analytics.leftout import LeftOut, left_out
from analytics.session import SqlSources, run_sql
from analytics.sources import tier_sources
from core.errors import FabtierError, SqlError, UserError
from core.settings import Settings
from fabtier.datadir import DataDirLock, identity, is_locked, sql_spill_dir
from fabtier.pipeline import Pipeline
from ingest.wal import read_segment, segment_numbers
from lifecycle import scheduler
from lifecycle.audit import AuditLog
from tiers import inventory
from tiers.cold import ColdLake
from tiers.store import settings_store
from tiers.unsealed import tables_from_records
from tiers.warm import WarmStore


def _exchange(settings: Settings, method: str, path: str, body: bytes | None = None,
              timeout: float = 300) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(settings.api_url + path, data=body, method=method)
    if settings.api.token:
        request.add_header("Authorization", f"Bearer {settings.api.token.reveal()}")
    if body is not None:
        request.add_header("Content-Type", "text/plain; charset=utf-8")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _request(settings: Settings, method: str, path: str, body: bytes | None = None,
             timeout: float = 300) -> tuple[int, bytes]:
    status, _, answer = _exchange(settings, method, path, body, timeout)
    return status, answer


def instance_running(settings: Settings) -> bool:
    """True when the instance answering at `[api]` host and port owns this data directory.

    One that answers but serves another data directory (a second configuration on the same
    port) is not ours: reads then go to the data directory itself, with a note on stderr."""
    try:
        status, body = _request(settings, "GET", "/health", timeout=2)
    except (urllib.error.URLError, OSError):
        return False
    if status not in (200, 503):
        return False
    try:
        served = json.loads(body).get("data_dir_id")
    except (ValueError, AttributeError):
        served = None
    if served is not None and served == identity(settings.data_dir):
        return True
    print(f"fabtier: the instance at {settings.api_url} serves another data directory than "
          f"{settings.data_dir}; reading {settings.data_dir} directly", file=sys.stderr)
    return False


def _error_of(body: bytes) -> str:
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]


def offline_sources(settings: Settings, warm: WarmStore | None = None, sql: str | None = None) -> SqlSources:
    """Every tier as stored on disk: the lake plus log segments not sealed yet; given `sql`,
    only the lake's days its time range touches (analytics.bounds)."""
    wal_dir = settings.data_dir / "wal"
    segments = segment_numbers(wal_dir)
    tables = tables_from_records([r for s in segments for r in read_segment(wal_dir / f"{s:012d}.wal")])
    return tier_sources(lake=ColdLake(settings_store(settings), writer_id=settings.cold.writer_id),
                        hidden=set(segments), unsealed=tables,
                        audit=AuditLog(settings.data_dir / "audit" / "moves.jsonl").table(),
                        warm=warm, data_dir=settings.data_dir, recipe_limits=load_book(settings).table(),
                        ts_bounds=ts_bounds(sql) if sql is not None else None,
                        minute_bounds=minute_bounds(sql) if sql is not None else None)


@dataclass(frozen=True)
class Answer:
    table: pa.Table
    left_out: LeftOut | None  # archived raw objects the answer could not read (issue 16)


def query(settings: Settings, sql: str) -> pa.Table:
    """Run one read-only statement over every tier; SqlError carries the database's message."""
    return answer(settings, sql).table


def answer(settings: Settings, sql: str, *, archived: str = "notice") -> Answer:
    """`query`, and what the answer leaves out: from the running instance's response headers,
    or from the data directory's lake. `archived="error"`: a statement that would leave
    archived objects out is refused (FabtierError with the notice) before it runs."""
    if instance_running(settings):
        status, headers, body = _exchange(settings, "POST", f"/sql?format=arrow&archived={archived}", sql.encode())
        if status == 200:
            return Answer(pa.ipc.open_stream(body).read_all(), LeftOut.from_headers(headers))
        if status == 400:
            raise SqlError(_error_of(body))
        if status == 409:
            raise FabtierError(f"{_error_of(body)}; no answer (--archived error)")
        raise FabtierError(f"the running fabtier at {settings.api_url} answered {status}: {_error_of(body)}")
    if is_locked(settings.data_dir):
        raise UserError(f"a fabtier pipeline holds {settings.data_dir} but its API at {settings.api_url} "
                        "does not answer; check [api] host and port in the configuration")
    lock = DataDirLock(settings.data_dir, exclusive=False)
    warm = WarmStore.open_read_only(settings.data_dir)
    try:
        sources = offline_sources(settings, warm, sql)
        missing = left_out(sources.archived_raw, sql)
        if missing is not None and archived == "error":
            raise FabtierError(f"{missing.notice()}; no answer (--archived error)")
        table = run_sql(sources, sql, memory_limit=settings.api.sql_memory_limit,
                        spill_dir=sql_spill_dir(settings.data_dir))
        return Answer(table, missing)
    finally:
        warm.close()
        lock.release()


def tiers(settings: Settings) -> dict:
    """`fabtier tiers`: from the running instance if there is one, else from the stores."""
    if instance_running(settings):
        status, body = _request(settings, "GET", "/tiers")
        if status != 200:
            raise FabtierError(f"the running fabtier at {settings.api_url} answered {status}: {_error_of(body)}")
        return json.loads(body)
    lock = DataDirLock(settings.data_dir, exclusive=False)
    warm = WarmStore.open_read_only(settings.data_dir)
    try:
        wal_dir = settings.data_dir / "wal"
        segments = segment_numbers(wal_dir)
        readings = tables_from_records(
            [r for s in segments for r in read_segment(wal_dir / f"{s:012d}.wal")]).readings
        wal_bytes = sum((wal_dir / f"{s:012d}.wal").stat().st_size for s in segments)
        rows = [inventory.unsealed_row(readings, wal_bytes),
                *inventory.stored_rows(settings_store(settings), settings.store_url, warm.stats())]
        return inventory.report(rows)
    finally:
        warm.close()
        lock.release()


def run_lifecycle(settings: Settings, now_ms: int | None = None) -> list[dict]:
    """Run every tiering job once: in the running instance if there is one, else here.
    `now_ms` is the time ages are measured against (default: the clock's now)."""
    if instance_running(settings):
        path = "/lifecycle/run" if now_ms is None else f"/lifecycle/run?now={int(now_ms)}"
        status, body = _request(settings, "POST", path, b"")
        if status != 200:
            raise FabtierError(f"the running fabtier at {settings.api_url} answered {status}: {_error_of(body)}")
        return json.loads(body)
    pipeline = Pipeline(settings)
    pipeline.open(warm=False)
    try:
        return scheduler.runner_for(pipeline).run_all(now_ms=now_ms)
    finally:
        pipeline.close_offline()
