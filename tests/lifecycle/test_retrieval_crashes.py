"""A kill (as kill -9: nothing after it runs) at every step of a retrieval job's life: while it
is planned and written, while its restores are asked for, while it is followed, and while
its notices go out. After each, a restart (new store, job store and notifier objects over
the same directories) finishes it: the job becomes ready, every archived object is restored
exactly once and its cost counted once, every restored reading is readable, and the notices
end with `ready` (a notice sent just before a kill is sent again: notices are at least once)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core.clock import ManualClock
from core.records import RestoreRequest
from lifecycle import retrieval as rt
from lifecycle import retrievals
from lifecycle.retrieval import State
from tests.lifecycle.test_retrieval_jobs import (
    T0,
    CountingStore,
    Recorder,
    _lake,
    _readings,
    _settings,
)
from tiers.cold import ColdLake

HOUR = 3_600_000
NOW = T0 + 10 * HOUR


class Killed(BaseException):
    """The process dies here: no `except Exception` catches it, nothing after it runs."""


@dataclass
class Steps:
    """The steps that touch the store, the job files and the notifiers, in order; Killed is
    raised at step `kill_at` (once; None: never). `started` counts restores the store began."""
    kill_at: int | None = None
    names: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def step(self, name: str) -> None:
        if self.kill_at is not None and len(self.names) == self.kill_at:
            self.kill_at = None
            raise Killed(f"killed at step {len(self.names)}: {name}")
        self.names.append(name)


class KilledStore(CountingStore):
    steps: Steps

    def info(self, key):
        self.steps.step("info")
        return super().info(key)

    def restore(self, key, *, keep_s, speed):
        self.steps.step("restore")
        answer = super().restore(key, keep_s=keep_s, speed=speed)
        if answer is RestoreRequest.STARTED:
            self.steps.started.append(key)
        self.steps.step("restore answered")  # the store took it; the job has not recorded it
        return answer


class KilledRecorder(Recorder):
    def __init__(self, steps: Steps, seen: list) -> None:
        super().__init__()
        self.steps, self.seen = steps, seen

    def notify(self, job: dict) -> None:
        self.steps.step(f"notify {job['state']}")
        super().notify(job)
        self.steps.step(f"notified {job['state']}")  # sent; the job file does not say so yet


def _kill_in_saves(steps: Steps, patch: pytest.MonkeyPatch) -> None:
    real = retrievals.JobStore.save

    def save(self, job):
        steps.step(f"save {job.state.value}")
        real(self, job)
    patch.setattr(retrievals.JobStore, "save", save)


def _life(path, steps: Steps, seen: list, clock: ManualClock) -> str:
    """A job's life from the request (unless there is a job: after a restart the follower
    takes it up) to `ready` and its notice; the job's id."""
    settings = _settings(path)
    store = KilledStore(path / "lake", clock=clock, restore_times=settings.retrieval.local_restore_seconds)
    store.steps = steps
    jobs = retrievals.JobStore(settings.data_dir)
    recorder = KilledRecorder(steps, seen)
    if not jobs.jobs():  # a first run, or a kill before the job was written: the engineer asks (again)
        retrievals.create(settings=settings, lake=ColdLake(store, writer_id="w0"), jobs=jobs,
                          request=rt.check_request(T0, T0 + 2 * HOUR, "standard"), now_ms=clock.now_ms())
    for _ in range(6):  # GLACIER takes 20 s, DEEP_ARCHIVE 40 s at standard speed here
        retrievals.deliver(jobs, [recorder])
        retrievals.follow(store=store, jobs=jobs, now_ms=clock.now_ms())
        clock.advance(10)
    retrievals.deliver(jobs, [recorder])
    [job] = jobs.jobs()
    return job.id


def _archived_lake(path) -> ManualClock:
    clock = ManualClock(NOW)
    _lake(path, _settings(path), clock)
    return clock


def test_a_kill_at_every_step_of_a_retrieval_is_finished_after_a_restart(tmp_path):
    clean_steps, clean_seen = Steps(), []
    clock = _archived_lake(tmp_path / "clean")
    with pytest.MonkeyPatch.context() as patch:
        _kill_in_saves(clean_steps, patch)
        job_id = _life(tmp_path / "clean", clean_steps, clean_seen, clock)
    clean = retrievals.JobStore(_settings(tmp_path / "clean").data_dir).get(job_id)
    assert clean.state is State.READY and [s for _, s in clean_seen] == ["restoring", "ready"]
    assert len(clean.objects) == 2 and all(o.requested for o in clean.objects) and clean.cost_usd > 0
    names = clean_steps.names
    assert {"save pending", "restore answered", "notified restoring", "notified ready"} <= set(names)

    for at, name in enumerate(names):
        run, where = tmp_path / f"kill-{at}", f"killed at step {at} ({name})"
        steps, seen = Steps(kill_at=at), []
        clock = _archived_lake(run)
        with pytest.MonkeyPatch.context() as patch:
            _kill_in_saves(steps, patch)
            with pytest.raises(Killed):
                _life(run, steps, seen, clock)
            job_id = _life(run, steps, seen, clock)  # the restart
        job = retrievals.JobStore(_settings(run).data_dir).get(job_id)
        assert job.state is State.READY, where
        assert all(o.state is State.READY and o.requested and o.asking_at is None for o in job.objects), where
        assert sorted(steps.started) == sorted(o.key for o in job.objects), where  # each asked once
        assert job.cost_usd == clean.cost_usd, where  # and counted once
        assert seen[-1] == (job_id, "ready"), where
        # Sent, and killed before the job file recorded it: sent again.
        resent = "notified ready" in (name, names[at - 1])
        assert [s for _, s in seen].count("ready") == (2 if resent else 1), where
        store = CountingStore(run / "lake", clock=clock, restore_times=_settings(run).retrieval.local_restore_seconds)
        assert _readings(ColdLake(store, writer_id="w0")) == 18, where
