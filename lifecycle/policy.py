"""The lake's lifecycle policy: one document, sent to S3 or evaluated by fabtier. Pure.

`policy_from_settings` turns `[lifecycle]` into a `Policy` (ages in seconds, exact), with
rules per kind of data, each filtered by its prefix under the store's root; nothing else
under the root (e.g. a local store's `.storage-classes.json`) matches any rule:

- `raw/` takes the full path: GLACIER after `glacier_after`, DEEP_ARCHIVE after
  `deep_archive_after`, expiry after `expire_after`;
- `agg_1m/`, `context/`, `alerts/` and `quarantine/` stay readable: they are small and they
  are what engineers ask for years later (lot history, alerts). At most STANDARD_IA after
  `glacier_after`, where S3 allows it (objects of 128 KiB and more, 30 days and more) and
  where it pays; otherwise they stay STANDARD. They expire after `expire_after` like raw
  (compliance retention is the same for every kind).

For an S3 store, `s3_document` renders the policy as a bucket lifecycle configuration: S3
counts whole days, so every age is rounded *up* to whole days (a "36h" glacier_after becomes
2 days), and the document is checked against S3's rules (`validate_s3_document`) before
anything is sent. For a local store, `evaluate` applies the very same rules with the exact
ages and returns the transitions and expiries due; the caller records each object's new
storage class, so the embedded default behaves like S3.

Small objects are not archived at a loss. An archived object costs, besides its bytes, a
transition request and 40 KB of overhead (8 KB billed at STANDARD, 32 KB at the archive
rate), and it is billed for at least the class's minimum duration. `break_even_size` is the
size from which a transition saves money over the time the object will stay in that class;
the transition rule only takes objects above the largest of these sizes and of
`[lifecycle] min_object_size` (default 128 KiB, S3's own default minimum), and a class that
never pays (ages so close that the minimum duration costs more than the saving) is left
out. Prices are the us-east-1 list prices (2025); they only set these thresholds.
`[lifecycle] cost_guard = false` turns the guard off (tests move tiny objects in seconds);
S3's own limits for STANDARD_IA (128 KiB, 30 days) always hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ConfigError
from core.records import STANDARD, ObjectInfo

DAY_S = 86_400.0
MONTH_S = 30.4375 * DAY_S
GIB = float(1 << 30)

GLACIER = "GLACIER"
DEEP_ARCHIVE = "DEEP_ARCHIVE"
STANDARD_IA = "STANDARD_IA"
# colder classes come later
_ORDER = {STANDARD: 0, STANDARD_IA: 1, "INTELLIGENT_TIERING": 1, "ONEZONE_IA": 2, "GLACIER_IR": 3,
          GLACIER: 4, DEEP_ARCHIVE: 5}


@dataclass(frozen=True)
class ClassPrice:
    gb_month: float  # USD per GiB-month
    transition: float  # USD per object moved into the class
    min_days: float  # minimum billed storage duration
    overhead_own: int = 0  # bytes of per-object overhead billed at this class's rate
    overhead_standard: int = 0  # bytes of per-object overhead billed at STANDARD's rate


PRICES = {
    STANDARD: ClassPrice(0.023, 0.0, 0.0),
    STANDARD_IA: ClassPrice(0.0125, 0.01 / 1000, 30.0),
    GLACIER: ClassPrice(0.0036, 0.03 / 1000, 90.0, 32 * 1024, 8 * 1024),
    DEEP_ARCHIVE: ClassPrice(0.00099, 0.05 / 1000, 180.0, 32 * 1024, 8 * 1024),
}

# The kinds of data in the lake (CONTRACT.md section 7 and the extensions), by prefix.
RAW = "raw"
READABLE_KINDS = ("agg_1m", "context", "alerts", "quarantine")  # never archived: at most STANDARD_IA
KINDS = (RAW, *READABLE_KINDS)
# S3 does not move objects under 128 KB to STANDARD_IA (and bills them as 128 KB there), nor
# accepts a transition to it before day 30.
IA_MIN_SIZE = 128 * 1024
IA_MIN_AGE_S = 30 * DAY_S


@dataclass(frozen=True)
class Transition:
    after_s: float
    storage_class: str


@dataclass(frozen=True)
class Rule:
    id: str
    prefix: str
    min_size: int | None = None  # objects strictly larger only (S3 ObjectSizeGreaterThan)
    transitions: tuple[Transition, ...] = ()
    expire_after_s: float | None = None
    kind: str = ""  # the kind of data (raw, agg_1m, ...) the rule is for

    def matches(self, key: str, size: int) -> bool:
        return key.startswith(self.prefix) and (self.min_size is None or size > self.min_size)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Action:
    key: str
    kind: str  # "transition" | "expire"
    from_class: str
    to_class: str | None
    rule: str


def _monthly(price: ClassPrice, size: int) -> float:
    standard = PRICES[STANDARD].gb_month
    return (size + price.overhead_own) / GIB * price.gb_month + price.overhead_standard / GIB * standard


def break_even_size(from_class: str, to_class: str, months: float) -> float:
    """Smallest object size (bytes) for which moving from `from_class` to `to_class` and
    keeping it there `months` costs less than staying; math.inf when it never pays."""
    a, b = PRICES[from_class], PRICES[to_class]
    billed = max(months, b.min_days * DAY_S / MONTH_S)
    # cost(stay) = months * monthly_a(s); cost(move) = fee + billed * monthly_b(s); both linear in s
    per_byte = months * a.gb_month / GIB - billed * b.gb_month / GIB
    fixed = b.transition + billed * _monthly(b, 0) - months * _monthly(a, 0)
    if per_byte <= 0:
        return math.inf
    return max(0.0, fixed / per_byte)


def policy_from_settings(lifecycle, *, prefix: str = "") -> Policy:
    """The policy of `[lifecycle]` for the objects under `prefix` (the store's root): rules
    per kind of data, each under `{prefix}{kind}/`."""
    rules = list(_raw_rules(lifecycle, f"{prefix}{RAW}/"))
    for kind in READABLE_KINDS:
        rules += _readable_rules(lifecycle, kind, f"{prefix}{kind}/")
    return Policy(tuple(rules))


def _raw_rules(lifecycle, prefix: str) -> list[Rule]:
    """Raw readings: GLACIER, then DEEP_ARCHIVE, then expiry."""
    glacier, deep, expire = lifecycle.glacier_after, lifecycle.deep_archive_after, lifecycle.expire_after
    transitions, thresholds = [], [float(lifecycle.min_object_size)]
    if lifecycle.cost_guard:
        glacier_size = break_even_size(STANDARD, GLACIER, (deep - glacier) / MONTH_S)
        deep_size = break_even_size(GLACIER, DEEP_ARCHIVE, (expire - deep) / MONTH_S)
    else:
        glacier_size = deep_size = 0.0
    if math.isfinite(glacier_size):
        transitions.append(Transition(glacier, GLACIER))
        thresholds.append(glacier_size)
    if math.isfinite(deep_size):
        transitions.append(Transition(deep, DEEP_ARCHIVE))
        thresholds.append(deep_size)
    rules = []
    if transitions:
        rules.append(Rule(f"fabtier-{RAW}-archive", prefix, min_size=int(math.ceil(max(thresholds))),
                          transitions=tuple(transitions), kind=RAW))
    rules.append(Rule(f"fabtier-{RAW}-expire", prefix, expire_after_s=expire, kind=RAW))
    return rules


def _readable_rules(lifecycle, kind: str, prefix: str) -> list[Rule]:
    """Aggregates, context, alerts, quarantine: readable for as long as they are kept, so at
    most STANDARD_IA (where S3 allows it and, with the cost guard, where it pays), then expiry."""
    glacier, expire = lifecycle.glacier_after, lifecycle.expire_after
    thresholds = [float(lifecycle.min_object_size), float(IA_MIN_SIZE)]
    if lifecycle.cost_guard:
        thresholds.append(break_even_size(STANDARD, STANDARD_IA, (expire - glacier) / MONTH_S))
    rules = []
    if glacier >= IA_MIN_AGE_S and math.isfinite(max(thresholds)):
        rules.append(Rule(f"fabtier-{kind}-ia", prefix, min_size=int(math.ceil(max(thresholds))),
                          transitions=(Transition(glacier, STANDARD_IA),), kind=kind))
    rules.append(Rule(f"fabtier-{kind}-expire", prefix, expire_after_s=expire, kind=kind))
    return rules


def describe(policy: Policy) -> dict[str, dict]:
    """The policy per kind of data, for people: the classes it passes through, when, for
    which objects, and when it expires."""
    kinds: dict[str, dict] = {}
    for rule in policy.rules:
        entry = kinds.setdefault(rule.kind or rule.prefix, {
            "prefix": rule.prefix, "classes": [STANDARD], "transitions": [], "expire_after_s": None})
        for t in rule.transitions:
            entry["transitions"].append({"after_s": t.after_s, "storage_class": t.storage_class,
                                         "objects_larger_than_bytes": rule.min_size})
            entry["classes"].append(t.storage_class)
        if rule.expire_after_s is not None:
            entry["expire_after_s"] = rule.expire_after_s
    for entry in kinds.values():
        entry["readable_throughout"] = not any(c in (GLACIER, DEEP_ARCHIVE) for c in entry["classes"])
    return kinds


# ---- S3 -----------------------------------------------------------------------------------
def _days(seconds: float) -> int:
    return max(1, math.ceil(seconds / DAY_S - 1e-9))


def s3_document(policy: Policy) -> dict:
    """The bucket lifecycle configuration (boto3's shape), validated; ages rounded up to days."""
    rules = []
    for rule in policy.rules:
        filter_: dict[str, object]
        if rule.min_size is not None:
            filter_ = {"And": {"Prefix": rule.prefix, "ObjectSizeGreaterThan": rule.min_size}}
        else:
            filter_ = {"Prefix": rule.prefix}
        body: dict = {"ID": rule.id, "Status": "Enabled", "Filter": filter_}
        if rule.transitions:
            body["Transitions"] = [{"Days": _days(t.after_s), "StorageClass": t.storage_class}
                                   for t in rule.transitions]
        if rule.expire_after_s is not None:
            body["Expiration"] = {"Days": _days(rule.expire_after_s)}
        rules.append(body)
    document = {"Rules": rules}
    problems = validate_s3_document(document)
    if problems:
        raise ConfigError("[lifecycle]", "the S3 lifecycle configuration would be refused: " + "; ".join(problems),
                          "on an S3 store the ages count in whole days (rounded up): make glacier_after, "
                          "deep_archive_after and expire_after at least a day apart")
    return document


_FILTER_KEYS = {"Prefix", "Tag", "And", "ObjectSizeGreaterThan", "ObjectSizeLessThan"}
_MAX_SIZE = 5 * 1024 ** 4


def validate_s3_document(document: dict) -> list[str]:
    """What S3 would refuse in a lifecycle configuration (an empty list: nothing)."""
    problems: list[str] = []
    rules = document.get("Rules")
    if not isinstance(rules, list) or not rules:
        return ["a configuration needs at least one rule"]
    if len(rules) > 1000:
        problems.append("at most 1000 rules")
    ids = [r.get("ID", "") for r in rules]
    if len(set(ids)) != len(ids):
        problems.append("rule IDs must be unique")
    transition_days: dict[str, int] = {}
    expiry_days = None
    for rule in rules:
        name = rule.get("ID", "?")
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            problems.append(f"rule {name!r}: an ID has 1 to 255 characters")
        if rule.get("Status") not in ("Enabled", "Disabled"):
            problems.append(f"rule {name}: Status must be Enabled or Disabled")
        problems += [f"rule {name}: {p}" for p in _filter_problems(rule.get("Filter"))]
        actions = [k for k in ("Transitions", "Expiration", "NoncurrentVersionTransitions",
                               "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload") if k in rule]
        if not actions:
            problems.append(f"rule {name}: a rule needs at least one action")
        previous_class, previous_days, seen_classes = None, -1, set()
        for t in rule.get("Transitions", []):
            days, cls = t.get("Days"), t.get("StorageClass")
            if cls not in _ORDER or cls == STANDARD:
                problems.append(f"rule {name}: {cls!r} is not a transition storage class")
                continue
            if not isinstance(days, int) or isinstance(days, bool) or days < 0:
                problems.append(f"rule {name}: transition Days must be a whole number >= 0")
                continue
            if cls in ("STANDARD_IA", "ONEZONE_IA") and days < 30:
                problems.append(f"rule {name}: {cls} needs Days >= 30")
            if cls in seen_classes:
                problems.append(f"rule {name}: two transitions to {cls}")
            seen_classes.add(cls)
            if previous_class is not None and (_ORDER[cls] <= _ORDER[previous_class] or days <= previous_days):
                problems.append(f"rule {name}: the transition to {cls} must come after the one to "
                                f"{previous_class}, on a later day ({days} <= {previous_days})")
            previous_class, previous_days = cls, days
            transition_days[cls] = days
        expiration = rule.get("Expiration")
        if expiration is not None:
            days = expiration.get("Days")
            if not isinstance(days, int) or isinstance(days, bool) or days < 1:
                problems.append(f"rule {name}: Expiration Days must be a whole number >= 1")
            elif previous_days >= 0 and days <= previous_days:
                problems.append(f"rule {name}: Expiration must come after the last transition")
            else:
                expiry_days = days if expiry_days is None else min(expiry_days, days)
    # Across rules (fabtier's own check: S3 would take it, but data would expire first).
    if expiry_days is not None and transition_days and max(transition_days.values()) >= expiry_days:
        problems.append(f"objects would expire (day {expiry_days}) before or when they are archived "
                        f"(day {max(transition_days.values())})")
    return problems


def _filter_problems(filter_) -> list[str]:
    if not isinstance(filter_, dict) or len(filter_) != 1 or not set(filter_) <= _FILTER_KEYS:
        return ["Filter must hold exactly one of Prefix, Tag, And, ObjectSizeGreaterThan, ObjectSizeLessThan"]
    (key, value), = filter_.items()
    conditions = value if key == "And" else {key: value}
    problems = []
    if key == "And" and (not isinstance(value, dict) or len(value) < 2):
        problems.append("And needs at least two conditions")
    if not isinstance(conditions, dict):
        return problems + ["And must be an object"]
    prefix = conditions.get("Prefix", "")
    if not isinstance(prefix, str) or len(prefix.encode()) > 1024:
        problems.append("Prefix must be a string of at most 1024 bytes")
    greater, less = conditions.get("ObjectSizeGreaterThan"), conditions.get("ObjectSizeLessThan")
    for size in (greater, less):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE):
            problems.append("object sizes must be whole numbers of bytes up to 5 TB")
    if isinstance(greater, int) and isinstance(less, int) and greater >= less:
        problems.append("ObjectSizeGreaterThan must be less than ObjectSizeLessThan")
    return problems


# ---- local evaluation ---------------------------------------------------------------------
def evaluate(policy: Policy, objects: list[ObjectInfo], now_ms: int) -> list[Action]:
    """The transitions and expiries due at `now_ms`, by the exact ages of the policy."""
    actions = []
    for obj in objects:
        age_s = (now_ms - obj.last_modified_ms) / 1000.0
        matching = [r for r in policy.rules if r.matches(obj.key, obj.size)]
        expiring = [r for r in matching if r.expire_after_s is not None and age_s >= r.expire_after_s]
        if expiring:
            actions.append(Action(obj.key, "expire", obj.storage_class, None, expiring[0].id))
            continue
        target, rule_id = obj.storage_class, None
        for rule in matching:
            for t in rule.transitions:
                if age_s >= t.after_s and _ORDER[t.storage_class] > _ORDER.get(target, 0):
                    target, rule_id = t.storage_class, rule.id
        if rule_id is not None:
            actions.append(Action(obj.key, "transition", obj.storage_class, target, rule_id))
    return actions
