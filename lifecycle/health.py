"""Steps that failed and have not worked since: what makes `/health` say `degraded`.

A step is the seal (`fabtier.sealing`) or a tiering job (`lifecycle.scheduler`: compaction,
the lifecycle, retrieval, ...). Each failure is noted with the store's own reason (one line,
e.g. `S3 refused an operation on s3://...: 403: Forbidden`) and, where one is known, the fix
(`known_fix`); the step's next success clears it. The count of failures per step only grows
(`/metrics`). Times are the pipeline clock's epoch milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from dataclasses import dataclass

from core.errors import FabtierError
from core.settings import Settings
from tiers.s3bucket import TLS_STATEMENT_ID

log = logging.getLogger("fabtier.health")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Problem:
    step: str
    message: str        # the store's reason, one line
    fix: str | None     # what to do about it, when known
    since_ms: int       # the first failure since the step last worked
    last_ms: int        # the latest failure
    failures: int = 1   # failures since the step last worked

    def public(self) -> dict:
        return {"step": self.step, "message": self.message, "fix": self.fix, "failures": self.failures,
                "since": _iso(self.since_ms), "last": _iso(self.last_ms), "since_ms": self.since_ms,
                "last_ms": self.last_ms}


class Faults:
    """The open problems of one process's steps; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Problem] = {}
        self._counts: dict[str, int] = {}

    def failed(self, step: str, message: str, *, at_ms: int, fix: str | None = None) -> Problem:
        with self._lock:
            self._counts[step] = self._counts.get(step, 0) + 1
            problem = self._open.get(step)
            if problem is None:
                problem = self._open[step] = Problem(step, message, fix, at_ms, at_ms)
            else:
                problem.message, problem.fix, problem.last_ms = message, fix, at_ms
                problem.failures += 1
            return problem

    def succeeded(self, step: str, *, at_ms: int) -> Problem | None:
        """The step worked: its problem (if it had one) is gone; returns it."""
        with self._lock:
            problem = self._open.pop(step, None)
        if problem is not None:
            log.info("%s works again after %d failure(s) since %s (last: %s)", step, problem.failures,
                     _iso(problem.since_ms), problem.message)
        return problem

    def problems(self) -> list[Problem]:
        with self._lock:
            return sorted(self._open.values(), key=lambda p: (p.since_ms, p.step))

    def count(self, step: str) -> int:
        with self._lock:
            return self._counts.get(step, 0)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def reason_of(exc: BaseException) -> str:
    """One line saying why: a FabtierError's message is written for people (a store's carries
    S3's code and message); any other exception keeps its type. A forked child's failure
    carries its traceback after the first line, which is left out here."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(exc, FabtierError) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


_DENIED = re.compile(r"\b403\b|AccessDenied|ACCESS_DENIED|Forbidden|AllAccessDisabled")
_CREDENTIALS = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken|"
                          r"NoCredentials|Unable to locate credentials|security token")
_UNREACHABLE = re.compile(r"Could not connect|Connection refused|EndpointConnectionError|"
                          r"Connect timeout|Name or service not known|Couldn't connect")
_NO_BUCKET = re.compile(r"NoSuchBucket|specified bucket does not exist")
_THROTTLED = re.compile(r"SlowDown|Throttl|RequestLimitExceeded|TooManyRequests|\b503\b")
_TIMED_OUT = re.compile(r"ReadTimeout|Read timeout|Timeout was reached|timed out", re.IGNORECASE)
_SERVER_ERROR = re.compile(r"InternalError|\b500\b|ServiceUnavailable|InternalServerError")
_DISK_FULL = re.compile(r"No space left|Errno 28|ENOSPC|Disk quota exceeded")
_NOT_ALLOWED = re.compile(r"Permission denied|Errno 13|Read-only file system|Errno 30")


def known_fix(reason: str, settings: Settings) -> str | None:
    """What to do about `reason` (from `reason_of`) with this configuration, when known."""
    url = settings.store_url
    s3 = url.startswith("s3://")
    endpoint = settings.cold.endpoint_url
    if s3 and _CREDENTIALS.search(reason):
        return ("the store does not accept fabtier's AWS credentials: check the standard AWS chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance role) and that they are valid")
    if s3 and _DENIED.search(reason):
        if endpoint.lower().startswith("http://"):
            return (f"{endpoint} is plain HTTP: a bucket policy that refuses requests without TLS (such as "
                    f"{TLS_STATEMENT_ID}, which `fabtier cold setup` used to add) refuses every request of "
                    "fabtier's; run `fabtier cold setup` again (it removes that statement on an http:// endpoint) "
                    "or reach the store over https://. Otherwise check the credentials and that their policy "
                    "allows what `fabtier cold iam-policy` prints")
        return ("check that fabtier's AWS credentials are allowed what `fabtier cold iam-policy` prints, and "
                "that no bucket policy denies them (a Deny wins over every Allow)")
    if s3 and _NO_BUCKET.search(reason):
        return f"the bucket of {url} does not exist: create it with `fabtier cold setup`"
    if s3 and _UNREACHABLE.search(reason):
        where = endpoint or "AWS"
        return f"the store's endpoint ({where}) cannot be reached: check that it runs and [cold] endpoint_url"
    if s3 and _THROTTLED.search(reason):
        return ("S3 asks fabtier to slow down (SlowDown/503): each request was retried with backoff; the log "
                "keeps the data and the next run tries again. If it persists, lengthen [cold] seal_every (fewer, "
                "larger objects) or spread the lake over more prefixes")
    if s3 and _TIMED_OUT.search(reason):
        where = endpoint or "AWS"
        return (f"the store's endpoint ({where}) takes connections but did not answer in time (30 s): check "
                "the endpoint and the network between; the log keeps the data and the next run tries again")
    if s3 and _SERVER_ERROR.search(reason):
        return ("S3 answered with a server error (500 InternalError): transient on S3's side; it was retried, "
                "the log keeps the data and the next run tries again")
    if _DISK_FULL.search(reason):
        return f"the disk is full: free space under {url if not s3 else settings.data_dir}"
    if not s3 and _NOT_ALLOWED.search(reason):
        return f"fabtier's user may not write under {url}: check the directory's owner and permissions"
    return None


def describe(exc: BaseException | str, settings: Settings) -> tuple[str, str | None]:
    """(the reason, one line; the fix when known) of a failure."""
    reason = exc if isinstance(exc, str) else reason_of(exc)
    return reason, known_fix(reason, settings)


def traceback_of(exc: BaseException | str) -> BaseException | None:
    """`exc` when its traceback belongs in the log: an unexpected exception. A FabtierError or
    an OSError carries the store's or the system's reason, which the one line says."""
    if isinstance(exc, Exception) and not isinstance(exc, FabtierError | OSError):
        return exc
    return None


def with_fix(reason: str, fix: str | None) -> str:
    """The reason, then the fix, for a log line."""
    return f"{reason}. Fix: {fix}" if fix else reason
