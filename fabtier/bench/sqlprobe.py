"""The SQL client of `fabtier bench ingest --queries-per-s`, in a process of its own.

In the bench's process it shared the interpreter lock with the publisher (paho sending as
fast as the broker takes it, Python's 5 ms switch interval): each of the several times a
request gives the lock up (connect, send, receive) cost it up to 5 ms, some 20 ms a round
trip that no user of the instance pays. A dashboard or an engineer's client is a process of
its own; so is this one.

`python -m fabtier.bench.sqlprobe URL PER_S`: sends PROBE_SQL `PER_S` times a second (one at a
time: a slow answer delays the next, never piles them up) until its standard input closes;
prints `ready` once the first statement is answered, then, at the end, one JSON object: the
round trips (ms), the instance's Server-Timing phases (ms) and the error that stopped it, if any.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from fabtier.bench.harness import sql_timed

# What an engineer or a dashboard asks of the whole table while the fab ingests: it reads
# every tier (the lake's file statistics, every unsealed row), so it shows what a query costs
# the ingesting process beside what it answers.
PROBE_SQL = "SELECT count(*) AS n FROM readings"


def probe(url: str, per_s: float, done: threading.Event, on_first=lambda: None) -> dict:
    """`on_first` is called once the first statement has been answered (or has failed)."""
    took_ms: list[float] = []
    phases_ms: dict[str, list[float]] = {}
    error = ""
    period = 1 / per_s
    due = time.monotonic()
    while not done.wait(max(0.0, due - time.monotonic())):
        sent = time.perf_counter()
        try:
            _, phases = sql_timed(url, PROBE_SQL)
        except OSError as exc:
            error = str(exc)
            break
        finally:
            if not took_ms:
                on_first()
        took_ms.append((time.perf_counter() - sent) * 1000)
        for name, ms in phases.items():
            phases_ms.setdefault(name, []).append(ms)
        due = max(due + period, time.monotonic())
    return {"took_ms": took_ms, "phases_ms": phases_ms, "error": error}


def main(argv: list[str]) -> int:
    url, per_s = argv[0], float(argv[1])
    done = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    # The bench waits for this line before it publishes: a short run is measured with queries.
    print(json.dumps(probe(url, per_s, done, on_first=lambda: print("ready", flush=True))), flush=True)
    return 0


class SqlProbeProcess:
    """The probe started beside a running bench; `finish` stops it and gives its figures."""

    def __init__(self, url: str, per_s: float) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "fabtier.bench.sqlprobe", url, str(per_s)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self) -> None:
        """Until the first statement has been answered (the probe's `ready` line)."""
        if self._process.stdout is not None:
            self._process.stdout.readline()

    def finish(self) -> dict:
        out, _ = self._process.communicate(input="", timeout=660)
        answer = out.strip().splitlines()[-1] if out.strip() else ""
        if self._process.returncode != 0 or not answer.startswith("{"):
            return {"took_ms": [], "phases_ms": {}, "error": f"the SQL probe exited {self._process.returncode}"}
        return json.loads(answer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
