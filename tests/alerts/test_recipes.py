import json

import numpy as np
import pytest

from alerts.recipes import RecipeError, changed_history, kind_of, parse_book, read_book

T0 = 1_764_000_000_000

RECIPES_TOML = """
[[recipes]]
name = "ETCH-A"
version = 1
effective = 2025-01-01T00:00:00Z
settle = "1s"
[[recipes.steps]]
name = "stabilize"
duration = "6s"
limits = { temp = [60.0, 3.0], "rf/forward_power" = { setpoint = 0.0, tolerance = 5.0 } }
[[recipes.steps]]
name = "etch"
duration = "0.5m"
settle = "0s"
limits = { temp = [65.0, 3.0] }

[[recipes]]
name = "ETCH-A"
version = "2"
effective = "2026-03-01T06:00:00+01:00"
[[recipes.steps]]
name = "stabilize"
duration = 10
limits = { temp = [62.0, 2.0] }
"""


def test_toml_and_json_files_give_the_same_book(tmp_path):
    toml_path = tmp_path / "recipes.toml"
    toml_path.write_text(RECIPES_TOML)
    book = read_book(toml_path)
    json_path = tmp_path / "recipes.json"
    json_path.write_text(json.dumps({"recipes": [
        {"name": v.recipe, "version": v.version, "effective": v.effective_ms,
         "steps": [{"name": s.name, "duration": (s.end_ms - s.start_ms) / 1000, "settle": s.settle_ms / 1000,
                    "limits": {k: list(lim) for k, lim in s.limits.items()}} for s in v.steps]}
        for v in book.versions()]}))
    assert [(v.recipe, v.version, v.effective_ms, v.steps) for v in read_book(json_path).versions()] == [
        (v.recipe, v.version, v.effective_ms, v.steps) for v in book.versions()]
    v1 = book.get("ETCH-A", "1")
    assert [(s.name, s.start_ms, s.end_ms, s.settle_ms) for s in v1.steps] == [
        ("stabilize", 0, 6000, 1000), ("etch", 6000, 36000, 0)]
    assert book.get("ETCH-A", "2").effective_ms == 1772341200000  # 05:00 UTC
    assert book.kinds == ["rf/forward_power", "temp"]


def test_the_version_in_effect_is_the_latest_that_took_effect():
    book = parse_book({"recipes": [
        {"name": "R", "version": v, "effective": t, "steps": [{"name": "s", "duration": 1, "limits": {}}]}
        for v, t in (("b", T0 + 10), ("a", T0), ("c", T0 + 20))]})
    assert book.version_at("R", T0 - 1) is None
    assert [book.version_at("R", t).version for t in (T0, T0 + 9, T0 + 10, T0 + 10**9)] == ["a", "a", "b", "c"]
    assert book.version_at("unknown", T0) is None


def test_limits_are_looked_up_per_reading():
    book = parse_book({"recipes": [{"name": "R", "version": "1", "effective": 0, "settle": "1s", "steps": [
        {"name": "a", "duration": "5s", "limits": {"temp": [60, 3]}},
        {"name": "b", "duration": "5s", "settle": 0, "limits": {"temp": [70, 1], "pressure": [5, 1]}}]}]})
    rv = book.get("R", "1")
    temp, pressure, other = book.kind_index("ch3/temp"), book.kind_index("ch1/pressure"), book.kind_index("rf/x")
    assert other == -1
    offsets = np.array([500, 1000, 4999, 5000, 9999, 10_000, 5000, 5000])
    kinds = np.array([temp, temp, temp, temp, temp, temp, pressure, other])
    lo, hi, tol, step = book.limits(rv, offsets, kinds)
    nan = float("nan")
    np.testing.assert_array_equal(lo, [nan, 57, 57, 69, 69, nan, 4, nan])
    np.testing.assert_array_equal(hi, [nan, 63, 63, 71, 71, nan, 6, nan])
    np.testing.assert_array_equal(step, [-1, 0, 0, 1, 1, -1, 1, 1])


def test_kind_drops_only_the_chamber_level():
    assert kind_of("ch1/temp") == "temp" and kind_of("ch12/he_pressure") == "he_pressure"
    assert kind_of("rf/forward_power") == "rf/forward_power" and kind_of("lens/temp") == "lens/temp"


@pytest.mark.parametrize("doc, where, fix", [
    ({"recipes": [{"name": "R", "version": "1", "steps": []}]}, "recipes #1.effective", "add effective"),
    ({"recipes": [{"name": "R", "version": "1", "effective": "2026-01-01", "steps": [
        {"name": "s", "duration": 1, "limits": {}}]}]}, "(R v1).effective", "with an offset"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [
        {"name": "s", "duration": "soon", "limits": {}}]}]}, "(R v1).steps #1.duration", "duration"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [
        {"name": "s", "duration": 1, "limits": {"temp": [1, -2]}}]}]}, "limits.temp.tolerance", "0 or more"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [
        {"name": "s", "duration": 1, "limits": {"ch1/temp": [1, 2]}}]}]}, "limits.ch1/temp", "without the chamber"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [
        {"name": "s", "duration": 1, "limits": {"temp": "hot"}}]}]}, "limits.temp", "[setpoint, tolerance]"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "stepz": []}]}, "recipes #1.stepz", "known fields"),
    ({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [{"name": "s", "duration": 1, "limits": {}}]},
                  {"name": "R", "version": "1", "effective": 5, "steps": [{"name": "s", "duration": 1, "limits": {}}]}]},
     "recipes #2 (R v1)", "its own version name"),
    ({"recipe": []}, "recipe", "only [[recipes]]"),
])
def test_a_bad_recipe_names_the_entry_and_the_fix(doc, where, fix):
    with pytest.raises(RecipeError) as caught:
        parse_book(doc, "f.toml")
    assert where in caught.value.where and fix in caught.value.fix


def test_unreadable_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        read_book(tmp_path / "nope.toml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RecipeError, match="not valid JSON"):
        read_book(tmp_path / "bad.json")


def test_versions_in_effect_are_history_and_cannot_change():
    def book(limit, *extra):
        return parse_book({"recipes": [
            {"name": "R", "version": "1", "effective": T0, "steps": [{"name": "s", "duration": 1, "limits": {"temp": limit}}]},
            *extra]})
    future = {"name": "R", "version": "2", "effective": T0 + 1000, "steps": [{"name": "s", "duration": 1, "limits": {}}]}
    future_edit = dict(future, steps=[{"name": "s", "duration": 2, "limits": {}}])
    assert changed_history(book([1, 1], future), book([1, 1], future_edit), now_ms=T0 + 1) == []
    assert changed_history(book([1, 1]), book([1, 2]), now_ms=T0 + 1) == ["R v1 is in effect and was changed"]
    assert changed_history(book([1, 1], future), book([1, 1]), now_ms=T0 + 2000) == ["R v2 is in effect and was removed"]
    assert changed_history(book([1, 1]), book([1, 2]), now_ms=T0 - 1) == []  # not in effect yet
