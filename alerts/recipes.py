"""Recipe master data: recipes with versions and effective dates, and the limits they set.

A recipe version takes effect at its `effective` time and stays the historical truth for
every lot run started under it. A version is a list of steps, each with a duration, an
optional settling time, and a (setpoint, tolerance) per sensor *kind*; a reading of a
sensor of that kind, during that step, is inside the window when
`setpoint - tolerance <= value <= setpoint + tolerance`.

The sensor kind of a sensor is its name without a leading chamber level: `ch2/temp` is of
kind `temp`, `rf/forward_power` of kind `rf/forward_power` (the naming of DOMAIN.md and the
simulator's catalog).

Parsing and lookups are pure; `read_book` is the one function that touches a file.

File format (TOML; JSON with the same structure when the name ends in `.json`):

    [[recipes]]
    name = "ETCH-A"
    version = "3"
    effective = "2026-01-01T00:00:00Z"     # ISO-8601 with offset, or epoch ms
    settle = "2s"                          # optional default for its steps
    [[recipes.steps]]
    name = "stabilize"
    duration = "6s"
    settle = "3s"                          # optional: limits apply from here on
    limits = { temp = [60.0, 3.0], pressure = { setpoint = 30.0, tolerance = 3.0 } }
"""

from __future__ import annotations

import bisect
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import UserError
from core.units import parse_duration

_CHAMBER = re.compile(r"^ch\d+/")

RECIPE_LIMITS_SCHEMA = pa.schema([
    ("recipe", pa.string()),
    ("version", pa.string()),
    ("effective", pa.timestamp("ms", tz="UTC")),
    ("step_no", pa.int32()),
    ("step", pa.string()),
    ("step_start_s", pa.float64()),
    ("step_end_s", pa.float64()),
    ("settle_s", pa.float64()),
    ("kind", pa.string()),
    ("setpoint", pa.float64()),
    ("tolerance", pa.float64()),
    ("low", pa.float64()),
    ("high", pa.float64()),
])


class RecipeError(UserError):
    """The recipe file is wrong at `where`; the message says what and how to fix it."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}; {fix}")


def kind_of(sensor: str) -> str:
    """The sensor kind recipes set limits for: the name without a `chN/` chamber level."""
    return _CHAMBER.sub("", sensor, count=1)


@dataclass(frozen=True)
class Step:
    name: str
    start_ms: int  # from the start of the run
    end_ms: int
    settle_ms: int  # limits apply from start_ms + settle_ms on
    limits: Mapping[str, tuple[float, float]]  # kind -> (setpoint, tolerance)


@dataclass(frozen=True)
class RecipeVersion:
    recipe: str
    version: str
    effective_ms: int
    steps: tuple[Step, ...]
    # Arrays for vectorised lookups, built once: step bounds and a (step, kind) matrix of
    # limits whose extra last column is NaN, so that kind index -1 means "no limit".
    _arrays: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @property
    def duration_ms(self) -> int:
        return self.steps[-1].end_ms if self.steps else 0

    def step_at(self, offset_ms: int) -> Step | None:
        for step in self.steps:
            if step.start_ms <= offset_ms < step.end_ms:
                return step
        return None


class RecipeBook:
    """Every version of every recipe, and the sensor kinds they mention. Immutable."""

    def __init__(self, versions: list[RecipeVersion], source: str = "") -> None:
        self.source = source
        self._by_name: dict[str, list[RecipeVersion]] = {}
        for v in sorted(versions, key=lambda v: (v.recipe, v.effective_ms)):
            self._by_name.setdefault(v.recipe, []).append(v)
        self._starts = {name: [v.effective_ms for v in vs] for name, vs in self._by_name.items()}
        kinds = sorted({k for v in versions for s in v.steps for k in s.limits})
        self.kinds: list[str] = kinds
        self._kind_index = {k: i for i, k in enumerate(kinds)}

    def __len__(self) -> int:
        return sum(len(vs) for vs in self._by_name.values())

    def versions(self) -> list[RecipeVersion]:
        return [v for vs in self._by_name.values() for v in vs]

    def version_at(self, recipe: str, ts_ms: int) -> RecipeVersion | None:
        """The version of `recipe` in effect at `ts_ms`: the latest that took effect by then."""
        starts = self._starts.get(recipe)
        if not starts:
            return None
        i = bisect.bisect_right(starts, ts_ms) - 1
        return self._by_name[recipe][i] if i >= 0 else None

    def get(self, recipe: str, version: str) -> RecipeVersion | None:
        return next((v for v in self._by_name.get(recipe, ()) if v.version == version), None)

    def kind_index(self, sensor: str) -> int:
        """Column of the sensor's kind in the limit matrices, or -1 when no recipe sets it."""
        return self._kind_index.get(kind_of(sensor), -1)

    @property
    def no_kind(self) -> int:
        """The column that holds only NaN: what `limits` takes for "no limit for this sensor"."""
        return len(self.kinds)

    def _arrays_of(self, rv: RecipeVersion) -> dict:
        arrays = rv._arrays
        if arrays.get("kinds") is not self.kinds:  # built for another book's kind columns
            n, k = len(rv.steps), len(self.kinds)
            lo = np.full((n, k + 1), np.nan)
            hi = np.full((n, k + 1), np.nan)
            tol = np.full((n, k + 1), np.nan)
            for i, step in enumerate(rv.steps):
                for kind, (sp, t) in step.limits.items():
                    j = self._kind_index[kind]
                    lo[i, j], hi[i, j], tol[i, j] = sp - t, sp + t, t
            arrays.clear()
            # Flat (step, kind) matrices, with a NaN row appended for "no step applies".
            nan_row = np.full(k + 1, np.nan)
            arrays.update(kinds=self.kinds, lo=np.concatenate([lo.ravel(), nan_row]),
                          hi=np.concatenate([hi.ravel(), nan_row]), tol=np.concatenate([tol.ravel(), nan_row]),
                          ends=np.array([s.end_ms for s in rv.steps], dtype=np.int64),
                          applies=np.array([s.start_ms + s.settle_ms for s in rv.steps], dtype=np.int64),
                          ends_list=[s.end_ms for s in rv.steps],
                          applies_list=[s.start_ms + s.settle_ms for s in rv.steps])
        return arrays

    def limits(self, rv: RecipeVersion, offset_ms: np.ndarray,
               kind_col: np.ndarray, first: int | None = None,
               last: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | int]:
        """(low, high, tolerance, step index) per reading, from the readings' offsets into
        the run (whose min and max may be given) and their kinds' columns (`kind_index`,
        `no_kind` for none); NaN limits (and step -1) where no limit applies: after the
        last step, while a step settles, or for a kind the step does not set. The step is
        one int when every reading is in the same step."""
        a = self._arrays_of(rv)
        n_steps, width = len(rv.steps), len(self.kinds) + 1
        first = int(offset_ms.min()) if first is None else first
        last = int(offset_ms.max()) if last is None else last
        s0 = bisect.bisect_right(a["ends_list"], first)
        if s0 < n_steps and first >= a["applies_list"][s0] and last < a["ends_list"][s0]:
            # The whole batch lies in one step, past its settling: one add, then lookups.
            flat = kind_col + s0 * width if s0 else kind_col
            step: np.ndarray | int = s0
        else:
            steps = np.searchsorted(a["ends"], offset_ms, side="right")
            inside = steps < n_steps
            np.minimum(steps, n_steps - 1, out=steps)
            inside &= offset_ms >= a["applies"][steps]
            flat = np.where(inside, steps * width + kind_col, n_steps * width)
            steps[~inside] = -1
            step = steps
        return a["lo"].take(flat), a["hi"].take(flat), a["tol"].take(flat), step

    def steps_at(self, rv: RecipeVersion, offset_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per offset into a run: the index of its step (`len(rv.steps)` after the last step)
        and whether that step is still settling (its limits do not apply yet). For telling
        why `limits` gave NaN; not on the per-batch path."""
        a = self._arrays_of(rv)
        steps = np.searchsorted(a["ends"], offset_ms, side="right")
        in_step = steps < len(rv.steps)
        settling = np.zeros(len(steps), bool)
        settling[in_step] = offset_ms[in_step] < a["applies"][steps[in_step]]
        return steps, settling

    def table(self) -> pa.Table:
        """Every limit of every version, for the `recipe_limits` view."""
        rows = []
        for rv in self.versions():
            for no, step in enumerate(rv.steps, start=1):
                for kind, (sp, t) in sorted(step.limits.items()):
                    rows.append({"recipe": rv.recipe, "version": rv.version, "effective": rv.effective_ms,
                                 "step_no": no, "step": step.name, "step_start_s": step.start_ms / 1000,
                                 "step_end_s": step.end_ms / 1000, "settle_s": step.settle_ms / 1000,
                                 "kind": kind, "setpoint": sp, "tolerance": t, "low": sp - t, "high": sp + t})
        return pa.Table.from_pylist(rows, schema=RECIPE_LIMITS_SCHEMA)


EMPTY_BOOK = RecipeBook([])


# ---- parsing ------------------------------------------------------------------------------
# Step bounds and settling times go into int64 arrays (`_arrays_of`) and epoch ms into the
# `recipe_limits` table: a duration of `inf` or 2**62 s, or an effective time past year 9999,
# must be refused here, not overflow there.
_MAX_DURATION_MS = 1000 * 86_400_000  # 1000 days
_MIN_EFFECTIVE_MS, _MAX_EFFECTIVE_MS = -62_135_596_800_000, 253_402_300_799_999  # years 1 to 9999 (UTC)


def _duration_ms(raw: Any, where: str) -> int:
    try:
        ms = round(parse_duration(raw) * 1000)
    except (ValueError, TypeError, OverflowError):  # OverflowError: inf, or digits past a float
        raise RecipeError(where, f"{_show(raw)} is not a duration",
                          'write a number of seconds or a duration such as "6s" or "1.5m"') from None
    if ms > _MAX_DURATION_MS:
        raise RecipeError(where, f"{_show(raw)} is longer than 1000 days", 'write e.g. "30s" or "2h"')
    return ms


def _show(raw: Any) -> str:
    # A value as an error message shows it: short, and never a repr of a deeply nested list.
    try:
        text = repr(raw)
    except RecursionError:
        text = f"a nested {type(raw).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _effective_ms(raw: Any, where: str) -> int:
    ms: int | None = None
    if type(raw) is int:
        ms = raw
    elif isinstance(raw, datetime) and raw.tzinfo is not None:  # a TOML offset date-time
        ms = round(raw.timestamp() * 1000)
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            ms = round(moment.timestamp() * 1000)
    if ms is None:
        raise RecipeError(where, f"{_show(raw)} is not a time with a UTC offset",
                          'write an ISO-8601 time with an offset, e.g. "2026-01-01T00:00:00Z", or epoch ms')
    if not _MIN_EFFECTIVE_MS <= ms <= _MAX_EFFECTIVE_MS:
        raise RecipeError(where, f"{_show(raw)} is not in the years 1 to 9999 (UTC)",
                          'write e.g. "2026-01-01T00:00:00Z" or epoch ms such as 1767225600000')
    return ms


def _number(raw: Any, where: str) -> float:
    try:
        # float(): an integer too large for a double (JSON and TOML allow one) is an
        # OverflowError, not a number
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    except OverflowError:
        value = math.nan
    if not math.isfinite(value):
        raise RecipeError(where, f"{_show(raw)} is not a finite number", "write a number, e.g. 60.0")
    return value


def _limit(raw: Any, where: str) -> tuple[float, float]:
    if isinstance(raw, list) and len(raw) == 2:
        sp, tol = raw
    elif isinstance(raw, dict) and set(raw) == {"setpoint", "tolerance"}:
        sp, tol = raw["setpoint"], raw["tolerance"]
    else:
        raise RecipeError(where, "is not a limit", "write [setpoint, tolerance] or "
                          "{ setpoint = 60.0, tolerance = 3.0 }")
    sp, tol = _number(sp, where + ".setpoint"), _number(tol, where + ".tolerance")
    if tol < 0:
        raise RecipeError(where + ".tolerance", "is negative", "write a tolerance of 0 or more")
    return sp, tol


def _check_keys(doc: Mapping, known: set[str], required: set[str], where: str) -> None:
    for key in doc:
        if key not in known:
            raise RecipeError(f"{where}.{key}", "is not a recipe field", f"known fields: {', '.join(sorted(known))}")
    for key in sorted(required - set(doc)):
        raise RecipeError(f"{where}.{key}", "is missing", f"add {key} to every entry")


def _parse_version(doc: Any, where: str) -> RecipeVersion:
    if not isinstance(doc, dict):
        raise RecipeError(where, "is not a table", "write each recipe version as a [[recipes]] table")
    _check_keys(doc, {"name", "version", "effective", "settle", "steps"},
                {"name", "version", "effective", "steps"}, where)
    name, version = doc["name"], doc["version"]
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{where}.name", "is empty or not text", 'write the recipe name, e.g. "ETCH-A"')
    if isinstance(version, bool) or not isinstance(version, (str, int)) or version == "":
        raise RecipeError(f"{where}.version", f"{_show(version)} is not a version", 'write e.g. "3" or 3')
    where = f"{where} ({name} v{version})"
    effective = _effective_ms(doc["effective"], f"{where}.effective")
    default_settle = _duration_ms(doc.get("settle", 0), f"{where}.settle")
    steps_raw = doc["steps"]
    if not isinstance(steps_raw, list) or not steps_raw:
        raise RecipeError(f"{where}.steps", "has no steps", "add [[recipes.steps]] tables")
    steps, start = [], 0
    for i, raw in enumerate(steps_raw):
        at = f"{where}.steps #{i + 1}"
        if not isinstance(raw, dict):
            raise RecipeError(at, "is not a table", "write each step as a [[recipes.steps]] table")
        _check_keys(raw, {"name", "duration", "settle", "limits"}, {"name", "duration", "limits"}, at)
        duration = _duration_ms(raw["duration"], f"{at}.duration")
        if duration <= 0:
            raise RecipeError(f"{at}.duration", "is not longer than zero", 'write e.g. "30s"')
        settle = _duration_ms(raw["settle"], f"{at}.settle") if "settle" in raw else default_settle
        limits_raw = raw["limits"]
        if not isinstance(limits_raw, dict):
            raise RecipeError(f"{at}.limits", "is not a table", "write limits = { temp = [60.0, 3.0] }")
        limits = {}
        for kind, lim in limits_raw.items():
            if not kind or kind != kind.strip("/") or _CHAMBER.match(kind + "/") or _CHAMBER.match(kind):
                raise RecipeError(f"{at}.limits.{kind}", "is not a sensor kind",
                                  'name the kind without the chamber level, e.g. "temp", not "ch1/temp"')
            limits[kind] = _limit(lim, f"{at}.limits.{kind}")
        steps.append(Step(name=str(raw["name"]), start_ms=start, end_ms=start + duration,
                          settle_ms=settle, limits=limits))
        start += duration
    return RecipeVersion(recipe=name, version=str(version), effective_ms=effective, steps=tuple(steps))


def parse_book(doc: Any, source: str = "recipes") -> RecipeBook:
    """A recipe book from a parsed TOML/JSON document; RecipeError names the bad entry."""
    if not isinstance(doc, dict) or set(doc) - {"recipes"}:
        extra = sorted(set(doc) - {"recipes"}) if isinstance(doc, dict) else []
        raise RecipeError(f"{source}: {extra[0] if extra else 'top level'}", "is not expected",
                          "write only [[recipes]] tables")
    raw = doc.get("recipes", [])
    if not isinstance(raw, list):
        raise RecipeError(f"{source}: recipes", "is not a list", "write [[recipes]] tables")
    versions = [_parse_version(entry, f"{source}: recipes #{i + 1}") for i, entry in enumerate(raw)]
    seen: dict[tuple[str, str], int] = {}
    effective: dict[tuple[str, int], str] = {}
    for i, v in enumerate(versions):
        if (v.recipe, v.version) in seen:
            raise RecipeError(f"{source}: recipes #{i + 1} ({v.recipe} v{v.version})",
                              f"repeats recipes #{seen[(v.recipe, v.version)] + 1}",
                              "give every version of a recipe its own version name")
        seen[(v.recipe, v.version)] = i
        if (v.recipe, v.effective_ms) in effective:
            raise RecipeError(f"{source}: recipes #{i + 1} ({v.recipe} v{v.version}).effective",
                              f"is the same as version {effective[(v.recipe, v.effective_ms)]}'s",
                              "give each version of a recipe its own effective time")
        effective[(v.recipe, v.effective_ms)] = v.version
    return RecipeBook(versions, source)


def read_book(path: Path) -> RecipeBook:
    """Read and parse the recipe file (TOML, or JSON for a `.json` name)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), "does not exist", "give the path of the recipe file") from None
    except OSError as exc:
        raise RecipeError(str(path), f"cannot be read ({exc.strerror})", "check the path and its permissions") from None
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(str(path), f"is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({exc})",
                          "fix the syntax") from None
    except RecursionError:  # both parsers recurse per level of nesting: `a = [[[[...` is enough
        raise RecipeError(str(path), "is nested too deeply", "write recipes as [[recipes]] tables") from None
    return parse_book(doc, str(path))


def changed_history(old: RecipeBook, new: RecipeBook, now_ms: int) -> list[str]:
    """Versions that were already in effect and that `new` changes or drops.

    A version in effect is the historical truth of the lots run under it: a change to it
    must come as a new version. Versions not yet in effect may still be edited.
    """
    problems = []
    for v in old.versions():
        if v.effective_ms > now_ms:
            continue
        other = new.get(v.recipe, v.version)
        if other is None:
            problems.append(f"{v.recipe} v{v.version} is in effect and was removed")
        elif (other.effective_ms, other.steps) != (v.effective_ms, v.steps):
            problems.append(f"{v.recipe} v{v.version} is in effect and was changed")
    return problems
