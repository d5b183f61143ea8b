"""An early seal asked from several threads at once (the ingest thread and the committer both
ask when unsealed data passes the limit) starts one seal thread, and no caller fails: two callers
once started the same thread twice, and the ingest thread died of the RuntimeError."""

import sys
import threading
import time

from fabtier import pipeline as pipeline_module
from fabtier.pipeline import Pipeline


def test_an_early_seal_asked_by_many_threads_at_once_starts_one_and_fails_none(monkeypatch):
    running = []
    lock = threading.Lock()

    def seal(owner, job):
        with lock:
            running.append(threading.current_thread())
        time.sleep(0.002)

    monkeypatch.setattr(pipeline_module.scheduler, "run_scheduled", seal)
    class Owner:
        """A pipeline's early-seal slots, whose setter lets another caller in right after the
        store: the moment at which a caller that does not start its own thread starts another's."""

        def __init__(self) -> None:
            self._early_seal_lock = threading.Lock()
            self._slot = None

        @property
        def _early_seal(self):
            return self._slot

        @_early_seal.setter
        def _early_seal(self, thread):
            self._slot = thread
            time.sleep(0.001)

    owner = Owner()
    errors: list[BaseException] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the callers tightly
    try:
        for _ in range(50):
            start = threading.Barrier(6)

            def ask(start=start):
                start.wait()
                try:
                    Pipeline._seal_soon(owner)  # type: ignore[arg-type]
                except BaseException as exc:  # the failure this test looks for
                    errors.append(exc)

            callers = [threading.Thread(target=ask) for _ in range(6)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
            owner._early_seal.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert 50 <= len(running) <= 50 * 6 and len(set(running)) == len(running)
