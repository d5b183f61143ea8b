"""A forked child at idle CPU priority is raised (or replaced) once its work is needed soon.

The seal runs this way: below ingestion while it keeps up, at ingestion's priority once
unsealed data passes half of `[ingest] max_unsealed`, so other processes on the machine
cannot starve it into backpressure."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fabtier import forked

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or not forked.available(),
                                reason="needs Linux scheduling policies and os.fork")

ROOT = Path(__file__).resolve().parents[2]


def _own_policy() -> int:
    return os.sched_getscheduler(0)


def _wait_until_raised() -> int:
    """In the child: the policy it has once no longer idle (or after 30 s)."""
    import time
    deadline = time.monotonic() + 30
    while os.sched_getscheduler(0) == os.SCHED_IDLE and time.monotonic() < deadline:
        sum(range(10_000))  # CPU time: the parent sees progress, not a stall
    return os.sched_getscheduler(0)


def test_the_child_runs_idle_while_its_work_can_wait():
    assert forked.call_in_fork(_own_policy, timeout=60, idle_unless=lambda: False) == os.SCHED_IDLE


def test_the_child_runs_at_normal_priority_when_the_work_is_needed_at_once():
    assert forked.call_in_fork(_own_policy, timeout=60, idle_unless=lambda: True) == os.SCHED_OTHER
    assert forked.call_in_fork(_own_policy, timeout=60) == os.SCHED_OTHER  # no idle_unless: as the parent


def test_an_idle_child_is_raised_once_its_work_is_needed():
    needed = threading.Event()
    timer = threading.Timer(0.3, needed.set)
    timer.start()
    policy = forked.call_in_fork(_wait_until_raised, timeout=60, idle_unless=needed.is_set)
    timer.join()
    assert policy == os.SCHED_OTHER


SCRIPT = textwrap.dedent("""
    import json, os, sys, threading
    sys.path.insert(0, sys.argv[1])
    from fabtier import forked
    from tests.fabtier.test_forked_priority import _wait_until_raised

    started = sys.argv[2]
    def work():
        with open(started, "a") as f:
            f.write(f"{os.getpid()}\\n")
        return _wait_until_raised()

    needed = threading.Event()
    threading.Timer(0.3, needed.set).start()
    refused = []
    def probe():  # in a thread of its own: the policy is a thread's, and this one is thrown away
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            refused.append(True)
    prober = threading.Thread(target=probe)
    prober.start()
    prober.join()
    print(json.dumps({"refused": bool(refused),
                      "policy": forked.call_in_fork(work, timeout=60, idle_unless=needed.is_set)}))
""")


def test_where_raising_is_refused_the_idle_child_is_replaced_by_one_at_normal_priority(tmp_path):
    # Without CAP_SYS_NICE (and RLIMIT_NICE 0), the kernel refuses to raise a priority. As root,
    # setpriv drops the capability; as another user it is refused anyway.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv (util-linux) to drop CAP_SYS_NICE")
        prefix = [setpriv, "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"]
    started = tmp_path / "started"
    out = subprocess.run([*prefix, sys.executable, "-c", SCRIPT, str(ROOT), str(started)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["refused"], "the kernel let this process raise its priority: nothing tested"
    assert answer["policy"] == os.SCHED_OTHER
    assert len(started.read_text().split()) == 2  # the idle child, then its replacement
