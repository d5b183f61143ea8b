"""Shared pieces of the benchmarks: a fabtier instance in its own process, polled over HTTP."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from core.errors import FabtierError
from fabtier import processes
from fabtier.broker import free_port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and of its ended children (the forked sealers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def machine_busy_seconds() -> float:
    """CPU-seconds every core of this machine has been busy since boot (/proc/stat: user,
    nice, system, irq, softirq; not idle, I/O wait or time the hypervisor gave elsewhere)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class CpuShares:
    """CPU-seconds of named processes and of the whole machine between `start` and `stop`,
    as cores (seconds of CPU per second): where a 2-core machine's time went while a bench
    ran (the instance, the broker, the bench's own publisher, ...), and what was left."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._began = 0.0
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {**{name: process_cpu_seconds(pid) for name, pid in self.pids.items()},
                "machine": machine_busy_seconds()}

    def start(self) -> None:
        self._began, self._before = time.monotonic(), self._now()

    def stop(self) -> dict[str, float]:
        """Cores of each process, of the machine (`machine`), of everything else on it
        (`other`), and how many cores it has (`cores`)."""
        seconds = max(time.monotonic() - self._began, 1e-9)
        after = self._now()
        cores = {name: round((after[name] - self._before[name]) / seconds, 2) for name in after}
        cores["other"] = round(max(0.0, cores["machine"] - sum(cores[name] for name in self.pids)), 2)
        cores["cores"] = float(os.cpu_count() or 1)
        return cores


def proc_status(pid: int | str) -> dict[str, int]:
    """VmRSS, RssAnon (KiB) and Threads of a process (`"self"`: this one) from /proc; {} once
    it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            out[key] = int(value.split()[0])
    return out


def resident_mib(pid: int | str) -> int:
    """VmRSS of a process, MiB (0 once it is gone)."""
    return proc_status(pid).get("VmRSS", 0) // 1024


class InstanceProcess:
    """`fabtier run` in a child process (its own interpreter and GIL, as in production)."""

    def __init__(self, workdir: Path, *, broker_url: str, name: str = "bench", extra_toml: str = "",
                 broker_toml: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / f"{name}.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'data_dir = "{workdir / name}"\n'
            f'[broker]\nurl = "{broker_url}"\nclient_id = "fabtier-{name}"\n' + broker_toml +
            f"[api]\nport = {self.port}\n" + extra_toml,
            encoding="utf-8",
        )
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> InstanceProcess:
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen([sys.executable, "-m", "fabtier.cli", "run", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise FabtierError(f"fabtier run exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise FabtierError(f"fabtier run did not become ready; see {self.log_path}")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise FabtierError("fabtier run is not started")
        return self._process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the instance has used so far (from /proc)."""
        return process_cpu_seconds(self.pid)

    def metrics(self) -> dict:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return json.loads(response.read())

    def sql(self, statement: str) -> list[dict]:
        return self.sql_timed(statement)[0]

    def sql_timed(self, statement: str) -> tuple[list[dict], dict[str, float]]:
        return sql_timed(self.url, statement)

    def stop(self) -> None:
        processes.stop(self._process, timeout=300)  # stopping seals: it may take a while


def sql_timed(url: str, statement: str) -> tuple[list[dict], dict[str, float]]:
    """The rows of `POST /sql` at the instance `url`, and its own times of the answer in ms
    (its Server-Timing)."""
    request = urllib.request.Request(url + "/sql?format=json", data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read()), server_timing(response.headers.get("Server-Timing", ""))


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=ms, ...` (W3C Server-Timing) as {name: ms}; what it cannot read is left out."""
    found = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                try:
                    found[name.strip()] = float(value)
                except ValueError:
                    pass
    return found


def duckdb_profiled(sql: str, repeat: int) -> tuple[float, int, list]:
    """(median seconds, bytes read, rows) of `sql` on DuckDB's own Parquet reader."""
    import duckdb

    times, read, rows = [], 0, []
    with tempfile.TemporaryDirectory(prefix="fabtier-bench-prof-") as tmp:
        profile = Path(tmp) / "profile.json"
        for _ in range(repeat):
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute("PRAGMA enable_profiling = 'json'")
            con.execute(f"PRAGMA profiling_output = '{profile}'")
            start = time.perf_counter()
            rows = con.execute(sql).fetchall()
            times.append(time.perf_counter() - start)
            con.close()
            read = int(json.loads(profile.read_text()).get("io", {}).get("total_bytes_read", 0))
    return statistics.median(times), read, rows
