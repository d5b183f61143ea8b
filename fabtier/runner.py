"""A running fabtier instance: the pipeline, its scheduler and its HTTP API, started and
stopped in the right order."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time

from core.clock import Clock
from core.settings import Settings
from fabtier.api import ApiServer
from fabtier.pipeline import Pipeline, State
from lifecycle.scheduler import start_scheduler

log = logging.getLogger("fabtier")


class Instance:
    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.pipeline = Pipeline(settings, clock=clock)
        self.api: ApiServer | None = None
        self._scheduler = None

    def start(self, *, stop: threading.Event | None = None, freeze_gc: bool = False) -> Instance:
        """Everything up; with `stop`, waits for the broker (retrying) until `stop` is set;
        with `freeze_gc` (a process of its own: `fabtier run`), the objects made until ingestion
        starts are left out of every later collection (`freeze_startup_objects`)."""
        # The ingest thread keeps the GIL busy; a shorter switch interval than Python's 5 ms
        # lets the API's threads (dashboards, SQL) answer within a millisecond or so. (50 us
        # while a SQL statement ran took 5 ms off its 65 and cost ingestion 13 % at 5
        # statements a second: the network and log threads took the lock as often.)
        sys.setswitchinterval(0.0005)
        # Load (or compile) the hot ring's query beside recovery, and be done before ingestion
        # starts: under load, importing numba holds the interpreter lock for seconds.
        warming = threading.Thread(target=warm_compiled_code, name="fabtier-warm-compiled", daemon=True)
        warming.start()
        self.pipeline.open()
        # The API answers (503) while the pipeline subscribes, so that readers know it runs.
        self.api = ApiServer(self.pipeline, host=self.settings.api.host, port=self.settings.api.port,
                             token=self.settings.api.token.reveal())
        self.api.start()
        warming.join()
        if freeze_gc:
            freeze_startup_objects()
        try:
            self.pipeline.start(stop=stop)
            if self.pipeline.ready:
                self._scheduler = start_scheduler(self.pipeline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.pipeline.stop()
        if self.api is not None:
            self.api.stop()
            self.api = None

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api.host}:{self.api.port}" if self.api else ""


def freeze_startup_objects() -> None:
    """Collect once, then leave every object alive now out of later collections (`gc.freeze`):
    the libraries' objects (numba's, pyarrow's, DuckDB's, the API's) and the pipeline's, which
    live as long as the process. A full collection walks every tracked object, and on the
    ingest thread at 100,000 sensors it held the interpreter lock 100-120 ms every ~12 s (in
    process, ~190,000 objects); with them frozen, 7-23 ms. Frozen objects are still freed when
    their last reference goes, only a cycle among them is not. For a process of its own: in a
    test process it would freeze the test runner's objects too."""
    gc.collect()
    gc.freeze()


def warm_compiled_code() -> None:
    """Compile (or load from numba's cache) every kernel of the ingest and SQL paths. Each one
    that fails leaves its numpy or Python twin in use: the same answers, slower."""
    from ingest import arrayscan
    from tiers import hot, unsealed, viewcolumns  # none imports numba before its warm-up
    for warm, what in (
            (hot.use_compiled_writes, "the hot ring's compiled queries and writes (/series reports the same error)"),
            (unsealed.back_blocks_ahead, "the backing of unsealed blocks ahead of their copy"),
            (arrayscan.warm, "the compiled reading of sensor names and timestamps"),
            (viewcolumns.warm, "the compiled columns of SQL's view")):
        try:
            warm()
        except Exception:
            log.exception("could not load %s", what)


def install_stop_signals(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM ask for a clean stop instead of killing mid-write."""
    def ask_to_stop(signum: int, frame: object) -> None:
        stop.set()
    signal.signal(signal.SIGINT, ask_to_stop)
    signal.signal(signal.SIGTERM, ask_to_stop)


def wait_until_stopped(instance: Instance, stop: threading.Event, seconds: float | None) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        if instance.pipeline.state is State.FAILED:
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        stop.wait(0.2)
