"""Bad input for recipe files (issue 14), by hypothesis.

Properties: reading any file, TOML or JSON, and parsing any document raises nothing but
`RecipeError` (which names where, what and the fix), so a bad file on reload leaves the
previous recipes in use instead of ending the reload; and a book that is accepted is
usable: its limits table, its lookups and its limit arrays work for every version.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alerts.recipes import RecipeBook, RecipeError, changed_history, parse_book, read_book

settings.register_profile("bad-input", max_examples=int(os.environ.get("FABTIER_BAD_INPUT_EXAMPLES", "150")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
BAD_INPUT = settings.get_profile("bad-input")

T0 = 1_764_000_000_000

# ---- strategies -------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from([2**63, -(2**63) - 1, 10**30, 10**400])
           | st.floats() | st.text(max_size=12)
           | st.sampled_from(["6s", "1.5m", "0s", "-1s", "9" * 400 + "s", "1e9d", "2026-01-01T00:00:00Z",
                              "2026-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
           | st.datetimes(timezones=st.none() | st.just(UTC)) | st.dates() | st.times())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
kinds = st.sampled_from(["temp", "pressure", "rf/forward_power", "ch1/temp", "/temp", "temp/", "", "ch2", "x"])


@st.composite
def limit(draw):
    shape = draw(st.integers(0, 3))
    sp, tol = draw(scalars | st.floats(-1e6, 1e6)), draw(scalars | st.floats(0, 1e3))
    if shape == 0:
        return [sp, tol]
    if shape == 1:
        return {"setpoint": sp, "tolerance": tol}
    return draw(values)


@st.composite
def step(draw):
    doc = {"name": draw(st.text(max_size=8) | values), "duration": draw(st.sampled_from(["6s", 10, 0.5]) | scalars),
           "limits": draw(st.dictionaries(kinds, limit(), max_size=3) | values)}
    if draw(st.booleans()):
        doc["settle"] = draw(st.sampled_from(["1s", 0]) | scalars)
    return mutate(draw, doc, ["name", "duration", "limits"])


@st.composite
def version(draw):
    doc = {"name": draw(st.sampled_from(["ETCH-A", "CVD-B"]) | values),
           "version": draw(st.sampled_from(["1", "2", 3]) | values),
           "effective": draw(st.sampled_from([T0, "2026-01-01T00:00:00Z"]) | scalars),
           "steps": draw(st.lists(step(), max_size=4) | values)}
    if draw(st.booleans()):
        doc["settle"] = draw(st.sampled_from(["2s"]) | scalars)
    return mutate(draw, doc, ["name", "version", "effective", "steps"])


def mutate(draw, doc: dict, required: list[str]) -> dict:
    """Now and then one required field dropped, or a field that is not one added."""
    if draw(st.integers(0, 5)) == 0:
        del doc[draw(st.sampled_from(required))]
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.sampled_from(["unit", "Name", ""]))] = draw(values)
    return doc


documents = st.builds(lambda vs: {"recipes": vs}, st.lists(version(), max_size=3)) | values


def usable(book: RecipeBook) -> None:
    """What the alert engine, SQL and a reload do with an accepted book."""
    table = book.table()
    assert table.num_rows == sum(len(s.limits) for v in book.versions() for s in v.steps)
    for rv in book.versions():
        assert book.version_at(rv.recipe, rv.effective_ms) is not None
        assert rv.steps and all(s.end_ms > s.start_ms for s in rv.steps)
        offsets = np.array([0, rv.duration_ms // 2, rv.duration_ms - 1, rv.duration_ms], dtype=np.int64)
        cols = [book.kind_index(k) for k in book.kinds] + [book.no_kind]
        columns = np.array([cols[i % len(cols)] for i in range(len(offsets))], dtype=np.int64)
        low, high, tol, _ = book.limits(rv, offsets, columns)
        assert np.all(np.isnan(low) | (low <= high))
        book.steps_at(rv, offsets)
    assert changed_history(book, book, T0) == []


def _parse(doc):
    try:
        return parse_book(doc)
    except RecipeError as exc:
        assert exc.where and exc.problem and exc.fix
        return None


# ---- properties ---------------------------------------------------------------------------
def _one_step(**fields):
    return {"recipes": [{"name": "R", "version": "1", "effective": T0,
                         "steps": [{"name": "s", "duration": "6s", "limits": {"temp": [60.0, 3.0]}, **fields}]}]}


@BAD_INPUT
@given(doc=documents)
@example(doc=_one_step(duration=math.inf))  # round(inf): OverflowError
@example(doc=_one_step(duration="9" * 400 + "s"))  # a duration of inf seconds
@example(doc=_one_step(duration=2**62))  # step bounds past int64 in the limit arrays
@example(doc=_one_step(settle=2**62))
@example(doc=_one_step(limits={"temp": [10**400, 1.0]}))  # math.isfinite(10**400): OverflowError
@example(doc=_one_step(limits={"temp": {"setpoint": 1.0, "tolerance": 2**1100}}))
@example(doc={"recipes": [{"name": "R", "version": "1", "effective": 2**70, "steps": _one_step()["recipes"][0]
                           ["steps"]}]})  # epoch ms past int64: the recipe_limits table
@example(doc={"recipes": [{"name": "R", "version": "1", "effective": datetime(1, 1, 1, tzinfo=timezone(
    timedelta(hours=1))), "steps": _one_step()["recipes"][0]["steps"]}]})
def test_any_document_is_a_usable_book_or_a_recipe_error(doc):
    book = _parse(doc)
    if book is not None:
        usable(book)


toml_literals = st.sampled_from([
    '"6s"', "6", "0.5", "0", "-1", "inf", "-inf", "nan", "1e400", "99999999999999999999999", '"9999999999999999999999s"',
    "1979-05-27T07:32:00", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "[1, 2]", "[60.0, 3.0]", "[60.0, -3.0]", "{ a = 1 }",
    "{ setpoint = 1e308, tolerance = 1e308 }", "true", '""', "[" * 50 + "]" * 50, "9223372036854775807",
])
TOML_TEMPLATE = """
[[recipes]]
name = {name}
version = {version}
effective = {effective}
settle = {settle}
[[recipes.steps]]
name = "stabilize"
duration = {duration}
settle = {step_settle}
limits = {{ temp = {limit}, pressure = {{ setpoint = {setpoint}, tolerance = {tolerance} }} }}
"""


@BAD_INPUT
@given(fields=st.fixed_dictionaries({key: st.just(good) | toml_literals for key, good in {
    "name": '"ETCH-A"', "version": "3", "effective": '"2026-01-01T00:00:00Z"', "settle": '"2s"', "duration": '"6s"',
    "step_settle": '"3s"', "limit": "[60.0, 3.0]", "setpoint": "30.0", "tolerance": "3.0"}.items()}))
@example(fields={"name": '"R"', "version": "1", "effective": "2026-01-01T00:00:00Z", "settle": "0", "duration": "inf",
                 "step_settle": "0", "limit": "[1.0, 1.0]", "setpoint": "1.0", "tolerance": "1.0"})
def test_near_valid_toml_files(tmp_path_factory, fields):
    path = tmp_path_factory.mktemp("recipes") / "recipes.toml"
    path.write_text(TOML_TEMPLATE.format(**fields), encoding="utf-8")
    try:
        book = read_book(path)
    except RecipeError as exc:
        assert str(path) in exc.where and exc.problem and exc.fix
        return
    usable(book)


@BAD_INPUT
@given(text=st.text(max_size=300) | documents.map(lambda d: json.dumps(d, default=str, allow_nan=True)),
       suffix=st.sampled_from([".toml", ".json"]))
@example(text="[" * 100_000 + "]" * 100_000, suffix=".json")  # RecursionError from json
@example(text="a = " + "[" * 100_000 + "]" * 100_000, suffix=".toml")  # RecursionError from tomllib
@example(text='{"recipes": [{"name": "R", "version": "1", "effective": 1, "steps": [{"name": "s", "duration": 1, '
              '"limits": {"temp": [1e999, 1]}}]}]}', suffix=".json")  # json reads 1e999 as inf
@example(text="\ufeff[[recipes]]", suffix=".toml")
def test_any_file_is_a_usable_book_or_a_recipe_error(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("recipes") / f"recipes{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        book = read_book(path)
    except RecipeError as exc:
        assert exc.where.startswith(str(path)) and exc.problem and exc.fix
        return
    usable(book)


@BAD_INPUT
@given(durations=st.lists(st.integers(1, 10**7), min_size=1, max_size=5),
       effective=st.integers(0, 4_000_000_000_000) | st.datetimes(
           min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_valid_recipes_are_accepted_as_written(durations, effective):
    """The other side: checks that refuse bad input must not refuse good input."""
    doc = {"recipes": [{"name": "R", "version": "1", "effective": effective, "steps": [
        {"name": f"s{i}", "duration": f"{d}ms", "limits": {"temp": [60.0, 3.0]}} for i, d in enumerate(durations)]}]}
    book = parse_book(doc)
    (rv,) = book.versions()
    ends = np.cumsum(durations).tolist()
    assert [s.end_ms for s in rv.steps] == ends
    expected = effective if isinstance(effective, int) else round(effective.timestamp() * 1000)
    assert rv.effective_ms == expected
    usable(book)

