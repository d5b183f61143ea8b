"""Retrieval of archived raw lake objects, the pure part: what a request may ask, which objects
a time range needs, how long S3 takes to restore them and what that costs, and the states of
a retrieval job with their guarded transitions. No I/O (lifecycle.retrievals does it).

**Which objects.** The lake is partitioned by hour (`raw/date=D/hour=H/`), so a request for
[from, to) needs every archived raw object of every hour that range touches, and only those
a reader would read if they were readable (tiers.layout.visible: not a file whose readings a
compacted set holds too). A machine or sensor filter cannot narrow this down: an hour's files
hold every machine, and an archived object's Parquet footer (which has the machine column's
statistics) cannot be read before the object is restored, nor is a list of machines kept
beside the files. The filters are kept in the job, which says that they did not prune.

**Times** (`S3_RESTORE_SECONDS`): S3's typical restore times, the upper ends: GLACIER (S3
Glacier Flexible Retrieval) expedited 1-5 minutes, standard 3-5 hours, bulk 5-12 hours;
DEEP_ARCHIVE standard within 12 hours, bulk within 48 hours; DEEP_ARCHIVE has no expedited
retrieval, so a request at expedited speed whose range needs a DEEP_ARCHIVE restore is
refused, naming the objects and the speeds that work. A local store takes the times of
`[retrieval] local_*` (the same by default).

**Prices** (`RETRIEVAL_PRICES`): AWS us-east-1 list prices as known to the author in 2025
(not checked against AWS's price list from this machine, which has no internet), in the style
of tiers/inventory.py: USD per GiB retrieved and per 1,000 restore requests. GLACIER:
expedited 0.03 + 10.00, standard 0.01 + 0.05, bulk 0 + 0.025; DEEP_ARCHIVE: standard 0.02 +
0.10, bulk 0.0025 + 0.025. The restored copy is also billed as S3 Standard storage for the
days it is kept, and the archived object stays billed in its class; neither is included. A
job is charged only for the restores it asks for itself: an object already restored, or whose
restore another job asked for, costs it nothing.

**States.** A job is `pending` (nothing asked yet), `restoring`, `ready` (every object
readable) or `failed` (every object settled and at least one cannot be restored at all: it no
longer exists, e.g. the lifecycle expired it; the others stay restored). `ready` and `failed`
are final. Each object has the same four states; an object that was ready while its job was
still waiting for others, and whose copy expired meanwhile, is restored again.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from core.errors import FabtierError, UserError
from core.records import DEEP_ARCHIVE, GLACIER, SPEEDS
from tiers import layout
from tiers.layout import LakeFile
from tiers.parquetformat import hour_bounds_ms

GIB = 2**30
PRICES_AS_OF = "2025 (us-east-1 list prices; see lifecycle/retrieval.py)"
# (storage class, speed) -> (USD per GiB retrieved, USD per 1,000 restore requests)
RETRIEVAL_PRICES: dict[tuple[str, str], tuple[float, float]] = {
    (GLACIER, "expedited"): (0.03, 10.00),
    (GLACIER, "standard"): (0.01, 0.05),
    (GLACIER, "bulk"): (0.0, 0.025),
    (DEEP_ARCHIVE, "standard"): (0.02, 0.10),
    (DEEP_ARCHIVE, "bulk"): (0.0025, 0.025),
}
# (storage class, speed) -> seconds S3 typically takes at most to restore an object
S3_RESTORE_SECONDS: dict[tuple[str, str], float] = {
    (GLACIER, "expedited"): 5 * 60,
    (GLACIER, "standard"): 5 * 3600,
    (GLACIER, "bulk"): 12 * 3600,
    (DEEP_ARCHIVE, "standard"): 12 * 3600,
    (DEEP_ARCHIVE, "bulk"): 48 * 3600,
}
NO_PRUNING = ("the lake is partitioned by hour, not by machine or sensor, and an archived object's "
              "Parquet footer cannot be read before it is restored: every archived raw object of the "
              "hours in range is restored; the machine and sensor filters only say what you asked for")

RestoreSeconds = Callable[[str, str], float | None]


def s3_restore_seconds(storage_class: str, speed: str) -> float | None:
    return S3_RESTORE_SECONDS.get((storage_class, speed))


def restore_cost(storage_class: str, speed: str, size: int) -> float:
    """USD for one restore request of an object of `size` bytes (0 when S3 has no such speed)."""
    per_gib, per_thousand = RETRIEVAL_PRICES.get((storage_class, speed), (0.0, 0.0))
    return size / GIB * per_gib + per_thousand / 1000


class RetrievalError(UserError):
    """A retrieval request that cannot be done as asked; the message says what would work,
    `parameter` names the field at fault (from, to, speed, machine, sensor) when one is."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class UnknownJob(RetrievalError):
    """No retrieval job has this id."""


class InvalidTransition(FabtierError):
    """A job or object state change that the state machine does not allow (a bug)."""


class State(enum.Enum):
    PENDING = "pending"
    RESTORING = "restoring"
    READY = "ready"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (State.READY, State.FAILED)


_JOB_MOVES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RESTORING, State.READY, State.FAILED}),
    State.RESTORING: frozenset({State.READY, State.FAILED}),
    State.READY: frozenset(),
    State.FAILED: frozenset(),
}
_OBJECT_MOVES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RESTORING, State.READY, State.FAILED}),
    State.RESTORING: frozenset({State.READY, State.FAILED}),
    # its copy expired before the job was ready (restored again), or the object went away
    State.READY: frozenset({State.RESTORING, State.FAILED}),
    State.FAILED: frozenset(),
}


def move_job(current: State, new: State) -> State:
    if new is not current and new not in _JOB_MOVES[current]:
        raise InvalidTransition(f"a retrieval job cannot go from {current.value} to {new.value}")
    return new


def move_object(current: State, new: State) -> State:
    if new is not current and new not in _OBJECT_MOVES[current]:
        raise InvalidTransition(f"an object of a retrieval job cannot go from {current.value} to {new.value}")
    return new


def job_state(objects: Iterable[State]) -> State:
    """A job's state from its objects' states: ready when all are ready (or there are none),
    failed when all are settled and one failed, restoring once any is under way."""
    states = list(objects)
    if all(s is State.READY for s in states):
        return State.READY
    if all(s.final for s in states):
        return State.FAILED
    if any(s in (State.RESTORING, State.READY) for s in states):
        return State.RESTORING
    return State.PENDING


# ---- a request --------------------------------------------------------------------------
MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z


@dataclass(frozen=True)
class Request:
    from_ms: int
    to_ms: int  # exclusive
    speed: str
    machine: str | None = None
    sensor: str | None = None


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_request(from_ms: object, to_ms: object, speed: object, machine: object = None,
                  sensor: object = None) -> Request:
    """A valid request, or RetrievalError naming what does not fit (one line)."""
    for name, value in (("from", from_ms), ("to", to_ms)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RetrievalError(f"{name} must be epoch milliseconds (a whole number), not {value!r}", name)
        if not MIN_MS <= value < MAX_MS:
            raise RetrievalError(f"{name} must be from 2000-01-01 to before 3000-01-01, not {value}", name)
    assert isinstance(from_ms, int) and isinstance(to_ms, int)
    if to_ms <= from_ms:
        raise RetrievalError(f"the range is empty: to ({iso(to_ms)}) must be after from ({iso(from_ms)})", "to")
    if not isinstance(speed, str) or speed not in SPEEDS:
        raise RetrievalError(f"speed must be one of {', '.join(SPEEDS)}, not {speed!r}", "speed")
    for name, value in (("machine", machine), ("sensor", sensor)):
        if value is not None and (not isinstance(value, str) or not value):
            raise RetrievalError(f"{name} must be a non-empty string when given, not {value!r}", name)
    return Request(from_ms, to_ms, speed, machine if isinstance(machine, str) else None,
                   sensor if isinstance(sensor, str) else None)


# ---- which objects, and what they cost ----------------------------------------------------
def needed_objects(files: list[LakeFile], from_ms: int, to_ms: int) -> list[LakeFile]:
    """The archived raw files (restored or not) that a reader of [from_ms, to_ms) would read
    if they were readable: those of the hours the range touches, minus files a complete
    compacted set replaces (whatever the writer: nothing is hidden as unsealed here)."""
    in_range = [f for f in files if f.kind == "raw" and f.hour is not None
                and _overlaps(hour_bounds_ms(f.day, f.hour), from_ms, to_ms)]
    if not any(f.archived for f in in_range):
        return []
    would_read = {f.key for f in layout.visible([replace(f, archived=False) for f in in_range],
                                                writer="", hidden_segments=set())}
    return sorted((f for f in in_range if f.archived and f.key in would_read), key=lambda f: f.key)


def _overlaps(bounds: tuple[int, int], from_ms: int, to_ms: int) -> bool:
    return bounds[0] < to_ms and from_ms < bounds[1]


@dataclass
class JobObject:
    key: str
    bytes: int
    storage_class: str
    state: State = State.PENDING
    requested: bool = False  # this job asked for the restore (else it shares another's, or none was needed)
    requested_at: int | None = None
    expected_at: int | None = None  # when the restore should be done (S3's typical upper time)
    readable_until: int | None = None  # when the restored copy goes (None: not archived any more, or unknown)
    cost_usd: float = 0.0
    error: str | None = None  # the last refusal or failure; a pending object is asked again
    # Set (and made durable) just before this job asks for the restore, cleared once the answer
    # is recorded: a restore found running after a crash in between is this job's (its cost).
    asking_at: int | None = None

    def as_dict(self) -> dict:
        found = asdict(self)
        found["state"] = self.state.value
        return found

    @classmethod
    def from_dict(cls, data: dict) -> JobObject:
        return cls(**{**data, "state": State(data["state"])})


@dataclass
class Job:
    id: str
    state: State
    from_ms: int
    to_ms: int
    speed: str
    machine: str | None
    sensor: str | None
    keep_s: float
    store: str
    objects: list[JobObject]
    created_at: int
    updated_at: int
    eta_s: int = 0
    finished_at: int | None = None
    message: str = ""
    seq: int = 0  # the job's place among the data directory's jobs, in the order they were made
    # notifier name -> the last state it was told of (so that a failed notice is sent again)
    notified: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    @property
    def cost_usd(self) -> float:
        return round(sum(o.cost_usd for o in self.objects), 6)

    @property
    def readable_until(self) -> int | None:
        """When the first restored copy of a ready job goes (then `readings` loses rows again)."""
        until = [o.readable_until for o in self.objects if o.readable_until is not None]
        return min(until) if until else None

    def public(self) -> dict:
        """The job's JSON object (CONTRACT.md section 5): `fabtier retrieve --json`, the HTTP
        API, the MQTT notice and the webhook all carry this."""
        return {
            "id": self.id, "state": self.state.value,
            "objects": [{k: v for k, v in o.as_dict().items() if k != "asking_at"} for o in self.objects],
            "bytes": self.bytes, "eta_s": self.eta_s, "cost_usd": self.cost_usd,
            "from": self.from_ms, "to": self.to_ms, "from_iso": iso(self.from_ms), "to_iso": iso(self.to_ms),
            "machine": self.machine, "sensor": self.sensor, "speed": self.speed,
            "keep_restored_s": self.keep_s, "store": self.store,
            "created_at": self.created_at, "updated_at": self.updated_at, "finished_at": self.finished_at,
            "readable_until": self.readable_until, "message": self.message,
            "pruning": NO_PRUNING if (self.machine or self.sensor) else None,
            "cost_as_of": PRICES_AS_OF, "seq": self.seq,
        }

    def as_dict(self) -> dict:
        """What the job store keeps: the public object plus the notifiers' positions and the
        objects' `asking_at`."""
        return {**self.public(), "objects": [o.as_dict() for o in self.objects], "notified": dict(self.notified)}

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        return cls(id=data["id"], state=State(data["state"]), from_ms=data["from"], to_ms=data["to"],
                   speed=data["speed"], machine=data.get("machine"), sensor=data.get("sensor"),
                   keep_s=data["keep_restored_s"], store=data["store"],
                   objects=[JobObject.from_dict(o) for o in data["objects"]], created_at=data["created_at"],
                   updated_at=data["updated_at"], eta_s=int(data.get("eta_s", 0)),
                   finished_at=data.get("finished_at"), message=data.get("message", ""), seq=data.get("seq", 0),
                   notified=dict(data.get("notified", {})))


_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_id(now_ms: int) -> str:
    """Sortable by creation time, unique by its random tail, safe in a path and a topic."""
    return dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def plan(files: list[LakeFile], request: Request, *, store: str, keep_s: float, now_ms: int,
         restore_seconds: RestoreSeconds) -> Job:
    """A new job for `request` over the lake's raw `files` (as listed now, with their
    restore states): its objects, their expected times and costs. Raises RetrievalError for
    expedited when a DEEP_ARCHIVE object would have to be restored."""
    needed = needed_objects(files, request.from_ms, request.to_ms)
    objects = []
    impossible = []
    for f in needed:
        obj = JobObject(f.key, f.size, f.storage_class)
        if f.restored:
            obj.state = State.READY
        elif f.restoring:
            obj.state = State.RESTORING  # another job's (or someone's) restore: shared, not asked again
        else:
            seconds = restore_seconds(f.storage_class, request.speed)
            if seconds is None:
                impossible.append(f)
                continue
            obj.expected_at = now_ms + int(seconds * 1000)
            obj.cost_usd = round(restore_cost(f.storage_class, request.speed, f.size), 6)
        objects.append(obj)
    if impossible:
        classes = sorted({f.storage_class for f in impossible})
        speeds = [s for s in SPEEDS if all(restore_seconds(f.storage_class, s) is not None for f in impossible)]
        raise RetrievalError(
            f"{len(impossible)} object(s) of this range are in {', '.join(classes)}, which has no {request.speed} "
            f"retrieval (e.g. {impossible[0].key}); ask for {' or '.join(speeds) or 'another speed'} instead",
            "speed")
    job = Job(id=new_id(now_ms), state=State.PENDING, from_ms=request.from_ms, to_ms=request.to_ms,
              speed=request.speed, machine=request.machine, sensor=request.sensor, keep_s=keep_s, store=store,
              objects=objects, created_at=now_ms, updated_at=now_ms)
    settle(job, now_ms)
    return job


def settle(job: Job, now_ms: int) -> bool:
    """The job's state, ETA and message from its objects' states; True if the state changed."""
    before = job.state
    job.state = move_job(job.state, job_state(o.state for o in job.objects))
    # Seconds until the last open restore should be done (S3's typical upper time); 0 when
    # none is open, or when they are late.
    expected = [o.expected_at for o in job.objects if not o.state.final and o.expected_at is not None]
    job.eta_s = max(0, math.ceil((max(expected) - now_ms) / 1000)) if expected else 0
    job.updated_at = now_ms
    failed = [o for o in job.objects if o.state is State.FAILED]
    if job.state.final and job.finished_at is None:
        job.finished_at = now_ms
    if not job.objects:
        job.message = "no archived raw object holds readings of this range: nothing to restore"
    elif job.state is State.READY:
        until = job.readable_until
        job.message = (f"{len(job.objects)} object(s) readable; SQL (the readings view) includes them"
                       + (f" until {iso(until)}" if until is not None else ""))
    elif job.state is State.FAILED:
        job.message = (f"{len(failed)} object(s) cannot be restored: "
                       + "; ".join(f"{o.key}: {o.error}" for o in failed[:3])
                       + ("; ..." if len(failed) > 3 else "")
                       + f". The other {len(job.objects) - len(failed)} are readable")
    else:
        done = sum(o.state is State.READY for o in job.objects)
        job.message = f"{done} of {len(job.objects)} object(s) readable" + (
            f"; {len(failed)} cannot be restored" if failed else "")
    return job.state is not before
