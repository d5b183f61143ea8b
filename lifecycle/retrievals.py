"""Retrieval jobs, the I/O part: the durable job store, asking the object store for restores,
the follower that advances open jobs (the `retrieve` tiering job of lifecycle.jobs), and
handing each state change to the notifiers (lifecycle.notify). The planning and the states
are pure, in lifecycle.retrieval.

**Durable.** One JSON file per job, `{data_dir}/retrievals/{id}.json`, replaced atomically
(temporary file, fsync, rename, fsync of the directory) after every change; the job is written
as `pending` before any restore is asked, so a crash (kill -9) at any point leaves either no
job or one that the next run (`follow`) takes up where it stood: asking for a restore that was
already asked is answered "in progress" by the store and costs nothing more. Every change
happens under one lock per data directory (a thread lock and `flock` on
`retrievals/.lock`), so two requests or a request and the follower never interleave.

**Shared restores.** Before asking for a restore, the object's own restore state is read
(listing, or `info`): an object already being restored or restored is not asked again (its
job object says `requested: false`), whichever job asked first. Because requests are made
under the lock, two overlapping jobs ask S3 once per object.

**Following.** Each run looks at every object of every open job: gone (the lifecycle expired
it, or someone deleted it) -> `failed`; readable -> `ready`; restore running -> `restoring`;
archived with no restore (never asked, a refusal that may pass, or a copy that expired before
the job was ready) -> asked (again). A refusal that may pass (S3 busy, expedited capacity
exhausted) is kept in the object's `error` and asked again at the next run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from core.fsutil import fsync_dir
from core.protocols import ObjectStore
from core.records import RestoreRequest
from core.settings import Settings
from lifecycle import notify
from lifecycle import retrieval as rt
from lifecycle.retrieval import Job, JobObject, Request, State
from tiers import catalog
from tiers.cold import ColdLake
from tiers.store import LocalStore, ObjectMissing, StoreError

log = logging.getLogger("fabtier.retrieval")

RETRIEVE = "retrieve"


class _DirLock:
    """One per job directory and process: a re-entrant thread lock, and while it is held, an
    exclusive `flock` on `.lock` (other processes: the CLI working offline, a second API)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rlock = threading.RLock()
        self.depth = 0
        self.handle: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.rlock:
            if self.depth == 0:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.handle = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self.handle, fcntl.LOCK_EX)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0 and self.handle is not None:
                    os.close(self.handle)  # lets go of the flock
                    self.handle = None


_locks: dict[Path, _DirLock] = {}
_locks_guard = threading.Lock()


class JobStore:
    """The retrieval jobs of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "retrievals"
        key = self.dir.absolute()
        with _locks_guard:
            self._lock = _locks.setdefault(key, _DirLock(key))

    def locked(self) -> AbstractContextManager[None]:
        """Exclusive: other threads of this process and other processes wait."""
        return self._lock.held()

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def save(self, job: Job) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(job.id)
        tmp = self.dir / f".{job.id}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(json.dumps(job.as_dict(), sort_keys=True, indent=1).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(self.dir)

    def load(self, job_id: str) -> Job | None:
        if not rt.valid_id(job_id):
            return None
        try:
            return Job.from_dict(json.loads(self._path(job_id).read_bytes()))
        except FileNotFoundError:
            return None

    def get(self, job_id: str) -> Job:
        job = self.load(job_id)
        if job is None:
            raise rt.UnknownJob(f"no retrieval job {job_id!r} in {self.dir}; fabtier retrieve --list lists them")
        return job

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.json")):
            if not rt.valid_id(path.stem):
                continue
            try:
                found.append(Job.from_dict(json.loads(path.read_bytes())))
            except (ValueError, KeyError, TypeError) as exc:  # not written by this version: left alone
                log.warning("retrieval job file %s cannot be read (%s); it is skipped", path, exc)
        return sorted(found, key=lambda j: (j.seq, j.created_at, j.id))


def restore_seconds_of(store: ObjectStore) -> rt.RestoreSeconds:
    """How long this store takes to restore: a local store's configured times, S3's typical ones."""
    base = catalog.unwrap(store)
    return base.restore_times if isinstance(base, LocalStore) else rt.s3_restore_seconds


def _look(obj: JobObject, store: ObjectStore, now_ms: int, job: Job,
          restore_seconds: rt.RestoreSeconds) -> bool:
    """One look at one object, recording what it shows; True when a restore must be asked for
    (archived, none running, no readable copy)."""
    try:
        info = store.info(obj.key)
    except ObjectMissing:
        obj.state = rt.move_object(obj.state, State.FAILED)
        obj.error = ("the object no longer exists (expired by the lifecycle, or deleted): it cannot be "
                     "restored")
        obj.asking_at = None
        return False
    except StoreError as exc:
        obj.error = str(exc)
        return False
    if obj.asking_at is not None and (info.readable or info.restore_ongoing):
        # This job was asking when its process stopped, and the store took the request: the
        # restore is this job's (under the job lock nobody else asked since the look before).
        _asked(obj, job, now_ms=obj.asking_at, restore_seconds=restore_seconds)
    obj.asking_at = None
    if info.readable:
        obj.state = rt.move_object(obj.state, State.READY)
        obj.readable_until = info.restore_expiry_ms
        obj.error = None
        return False
    if info.restore_ongoing:
        obj.state = rt.move_object(obj.state, State.RESTORING)
        obj.error = None
        return False
    return True


def _asked(obj: JobObject, job: Job, *, now_ms: int, restore_seconds: rt.RestoreSeconds) -> None:
    """Record a restore that this job started at `now_ms`: its state, its expected end and its cost."""
    obj.state = rt.move_object(obj.state, State.RESTORING)
    seconds = restore_seconds(obj.storage_class, job.speed)
    cost = rt.restore_cost(obj.storage_class, job.speed, obj.bytes)
    obj.cost_usd = round((obj.cost_usd if obj.requested else 0.0) + cost, 6)
    obj.requested, obj.requested_at = True, now_ms
    obj.expected_at = now_ms + int((seconds or 0) * 1000)


def _ask(obj: JobObject, job: Job, store: ObjectStore, now_ms: int, restore_seconds: rt.RestoreSeconds) -> bool:
    """Ask for the restore of an archived object; True when one was started."""
    try:
        answer = store.restore(obj.key, keep_s=job.keep_s, speed=job.speed)
    except ObjectMissing:
        obj.state = rt.move_object(obj.state, State.FAILED)
        obj.error = "the object no longer exists (expired by the lifecycle, or deleted): it cannot be restored"
        return False
    except StoreError as exc:  # e.g. S3's expedited capacity exhausted: asked again next run
        obj.error = f"restore refused: {exc}"
        log.warning("retrieval %s: restore of %s refused (%s); asked again at the next run", job.id, obj.key, exc)
        return False
    finally:
        obj.asking_at = None
    obj.error = None
    if answer is RestoreRequest.STARTED:
        _asked(obj, job, now_ms=now_ms, restore_seconds=restore_seconds)
        return True
    if answer is RestoreRequest.IN_PROGRESS:
        obj.state = rt.move_object(obj.state, State.RESTORING)
    else:  # RESTORED (a copy appeared since `info`) or NOT_ARCHIVED: the next look has its expiry
        obj.state = rt.move_object(obj.state, State.READY)
    return False


def advance(job: Job, store: ObjectStore, now_ms: int, *, before_asking: Callable[[Job], None] | None = None) -> int:
    """Look at every unsettled object of an open job once, asking for restores where none
    runs; settle the job's state. `before_asking` makes the job durable once the objects to
    ask for are marked (`asking_at`), before any request goes out. Returns how many restores
    were asked for."""
    if job.state.final:
        return 0
    restore_seconds = restore_seconds_of(store)
    to_ask = [obj for obj in job.objects
              if obj.state is not State.FAILED and _look(obj, store, now_ms, job, restore_seconds)]
    if to_ask:
        for obj in to_ask:
            obj.asking_at = now_ms
        if before_asking is not None:
            before_asking(job)
    asked = sum(_ask(obj, job, store, now_ms, restore_seconds) for obj in to_ask)
    rt.settle(job, now_ms)
    return asked


def create(*, settings: Settings, lake: ColdLake, jobs: JobStore, request: Request, now_ms: int) -> Job:
    """Plan a job for `request`, make it durable, ask for its restores. RetrievalError when it
    cannot be done as asked (nothing is stored then)."""
    store = lake.store
    with jobs.locked():
        job = rt.plan(lake.lake_files("raw"), request, store=store.url, keep_s=settings.retrieval.keep_restored,
                      now_ms=now_ms, restore_seconds=restore_seconds_of(store))
        job.notified = dict.fromkeys(notify.notifier_names(settings), "")
        job.seq = max((j.seq for j in jobs.jobs()), default=0) + 1
        jobs.save(job)  # the intent first: a crash from here on is finished by the follower
        asked = advance(job, store, now_ms, before_asking=jobs.save)
        catalog.flush(store)  # the restores asked for: their days' manifests
        jobs.save(job)
    log.info("retrieval %s: %d archived object(s), %d byte(s), %d restore(s) asked (%s); %s", job.id,
             len(job.objects), job.bytes, asked, job.speed, job.state.value)
    return job


def follow(*, store: ObjectStore, jobs: JobStore, now_ms: int) -> dict:
    """Advance every open job once (the `retrieve` job's work, without notices)."""
    changed, asked, following = [], 0, []
    with jobs.locked():
        for job in jobs.jobs():
            if job.state.final:
                continue
            before = job.state
            asked += advance(job, store, now_ms, before_asking=jobs.save)
            jobs.save(job)
            if job.state is not before:
                changed.append(job.id)
                log.info("retrieval %s: %s -> %s (%s)", job.id, before.value, job.state.value, job.message)
            if not job.state.final:
                following.append(job.id)
    catalog.flush(store)
    catalog.repair(store)  # days a crashed process left marked
    return {"job": RETRIEVE, "changed": len(changed), "restores_requested": asked, "following": following}


def deliver(jobs: JobStore, notifiers: list[notify.JobNotifier]) -> int:
    """Hand every job whose state a notifier has not been told of yet to that notifier; a
    notice that fails is tried again at the next call. Returns how many went out."""
    due = [(job, n) for job in jobs.jobs() for n in notifiers
           if n.name in job.notified and job.notified[n.name] != job.state.value]
    sent = 0
    for job, notifier in due:
        try:
            notifier.notify(job.public())
        except notify.NotifyError as exc:
            log.warning("retrieval %s: %s notice of state %s failed (%s); sent again at the next run",
                        job.id, notifier.name, job.state.value, exc)
            continue
        sent += 1
        with jobs.locked():
            current = jobs.load(job.id)
            if current is not None:
                current.notified[notifier.name] = job.state.value
                jobs.save(current)
    return sent


def follow_and_notify(*, settings: Settings, store: ObjectStore, now_ms: int,
                      notifiers: list[notify.JobNotifier] | None = None) -> dict:
    """The scheduled `retrieve` job: advance the open jobs, then send the notices due."""
    jobs = JobStore(settings.data_dir)
    report = follow(store=store, jobs=jobs, now_ms=now_ms)
    report["notices"] = deliver(jobs, notify.build_notifiers(settings) if notifiers is None else notifiers)
    return report
