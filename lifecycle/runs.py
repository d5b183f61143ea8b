"""The record of tiering job runs: when each job last completed (to catch up missed runs on
start) and a history of the runs that did something, failed, were skipped or caught up
(the `job_runs` SQL view).

Two files under `{data_dir}/lifecycle/`: `last_runs.json`, replaced atomically after every
completed run, and `runs.jsonl`, appended and fsynced. APScheduler's memory job store forgets
everything on exit; these survive it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa

from core.fsutil import fsync_dir
from core.jsonltable import JsonlTable

RUNS_SCHEMA = pa.schema([
    ("job", pa.string()),
    ("trigger", pa.string()),       # start-up, schedule, manual
    ("outcome", pa.string()),       # ok, failed, skipped
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("as_of", pa.timestamp("ms", tz="UTC")),  # the `now` that ages were measured against
    ("missed", pa.int64()),         # scheduled periods that passed without a run
    ("detail", pa.string()),        # the job's report as JSON, or the error
])


@dataclass(frozen=True)
class JobRun:
    job: str
    trigger: str
    outcome: str
    started_at: int
    finished_at: int
    as_of: int
    missed: int
    detail: str


class RunHistory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._last_path = directory / "last_runs.json"
        self._history_path = directory / "runs.jsonl"
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        if self._last_path.exists():
            try:
                self._last = {k: int(v) for k, v in orjson.loads(self._last_path.read_bytes()).items()}
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                self._last = {}  # unreadable: every job counts as never run, and runs once now

    def last_completed(self, job: str) -> int | None:
        """When the last completed run of `job` started (epoch ms), or None."""
        with self._lock:
            return self._last.get(job)

    def record(self, run: JobRun, *, keep: bool) -> None:
        """Note a run; `keep` also appends it to the history (runs that did nothing are not kept)."""
        with self._lock:
            if run.outcome == "ok":
                self._last[run.job] = max(run.started_at, self._last.get(run.job, 0))
                tmp = self._last_path.with_suffix(".tmp")
                with open(tmp, "wb") as handle:
                    handle.write(orjson.dumps(self._last))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self._last_path)
                fsync_dir(self.directory)
            if keep:
                line = orjson.dumps(run.__dict__) + b"\n"
                with open(self._history_path, "ab") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())

    def table(self) -> pa.Table:
        return JsonlTable(self._history_path, RUNS_SCHEMA).table()
