"""The reading of a payload's arrays by compiled passes (ingest.arrayscan): for any bytes, the
compiled pass and the Python reading give the same answer, and that answer is what the JSON
means (the codes of its names, its integers), or None where it is not simply known names or
plain integers."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import arrayscan

# "\\u0061" is six characters, the bytes by which JSON may write "a": read only unescaped names.
KNOWN = ["ch1/temp", "ch1/pressure", "ch11/pressure", "ch1/pressure_x", "a", "é/ü", "tab\tname", "back\\slash",
         "0123456789abcdefXY", "0123456789abcdefZY", "\\u0061",  # 8, 9: the same first and last 8 bytes
         "0123456789abcdef01234567-tail-A", "0123456789abcdef01234567-tail-B"]  # the same first 24 bytes
TABLE = arrayscan.NameTable(KNOWN)
names = st.sampled_from(KNOWN) | st.text(max_size=6)
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r"])


@st.composite
def arrays(draw) -> tuple[bytes, int]:
    items = draw(st.lists(names | st.integers() | st.none(), max_size=8))
    sep, ws = draw(spaces), draw(spaces)
    text = ws + "[" + sep + ("," + sep).join(json.dumps(i, ensure_ascii=draw(st.booleans())) for i in items) + "]"
    raw = text.encode()
    if draw(st.integers(0, 5)) == 0:  # bytes cut, doubled or damaged
        raw = draw(st.sampled_from([raw[:-1], raw + raw, raw.replace(b",", b";", 1), raw + b"x"]))
    return raw, draw(st.sampled_from([len(items), len(items) + 1, max(0, len(items) - 1)]))


def _compiled_and_python(raw: bytes, rows: int):
    arrayscan.warm()
    compiled = arrayscan.name_codes(raw, TABLE, rows)
    python = arrayscan._with_python(raw, TABLE, rows)
    return compiled, python


@settings(max_examples=400, deadline=None)
@given(case=arrays())
def test_compiled_and_python_agree_and_mean_the_json(case):
    raw, rows = case
    compiled, python = _compiled_and_python(raw, rows)
    assert (compiled is None) == (python is None), (raw, compiled, python)
    if compiled is None:
        return
    (codes, distinct), (python_codes, python_distinct) = compiled, python
    assert codes.tolist() == python_codes.tolist() and distinct == python_distinct
    assert [KNOWN[c] for c in codes.tolist()] == orjson.loads(raw)
    assert len(codes) == rows and distinct == len(set(codes.tolist())) and b"\\" not in raw


@st.composite
def compact_arrays(draw) -> tuple[bytes, int]:
    """The form gateways send (no space), as the pass that reads it in words takes it, and the
    same cut short, run on, or with a name (or its closing quote) damaged."""
    items = draw(st.lists(names, max_size=12))
    raw = json.dumps(items, ensure_ascii=draw(st.booleans()), separators=(",", ":")).encode()
    if draw(st.integers(0, 3)) == 0:
        cut = draw(st.integers(0, max(0, len(raw) - 1)))
        raw = draw(st.sampled_from([raw[:cut], raw[:cut] + b'"' + raw[cut:], raw[:cut] + b"x" + raw[cut + 1:],
                                    raw[:-1] + b',"a"]', raw + b"]"]))
    return raw, draw(st.sampled_from([len(items), len(items) + 1, max(0, len(items) - 1)]))


@settings(max_examples=600, deadline=None)
@given(case=compact_arrays())
def test_the_compact_form_read_in_words_agrees_with_python(case):
    raw, rows = case
    compiled, python = _compiled_and_python(raw, rows)
    assert (compiled is None) == (python is None), (raw, compiled, python)
    if compiled is not None:
        assert compiled[0].tolist() == python[0].tolist() and compiled[1] == python[1]
    # and the careful pass alone (what the words' pass hands over) gives the same
    careful = arrayscan._compiled
    out = np.empty(rows, np.uint32)
    found, distinct = careful(np.frombuffer(raw, np.uint8), TABLE.slots, TABLE.heads, TABLE.blob, TABLE.starts, out)
    assert (found == rows) == (compiled is not None)


def test_the_compact_form_is_read_in_words_and_any_other_left_to_the_careful_pass():
    arrayscan.warm()
    by_words = arrayscan._compiled_words

    def read(raw: bytes, rows: int) -> tuple[list[int], int, int]:
        out = np.zeros(rows, np.uint32)
        found, distinct = by_words(*arrayscan._as_words(raw), TABLE.slots, TABLE.heads, TABLE.tails, TABLE.blob,
                                   TABLE.starts, out)
        return out.tolist(), found, distinct

    compact = json.dumps(KNOWN[-2:] + ["a", "ch1/pressure_x", "é/ü", "a"], ensure_ascii=False, separators=(",", ":"))
    assert read(compact.encode(), 6) == ([11, 12, 4, 3, 5, 4], 6, 5)
    assert read(b'["a","zz"]', 2)[1] == -1  # not in the table: refused here, as the careful pass would
    for spaced in (b'["a", "a"]', b' ["a"]', b'["a"]\n', b'["back\\slash"]'):
        assert read(spaced, 1 + spaced.count(b","))[1] == arrayscan.NOT_SIMPLE, spaced


def test_plain_known_names_are_read_and_anything_else_is_left_to_the_decoder():
    raw = json.dumps(["a", "ch11/pressure", "é/ü", "0123456789abcdefZY", "ch1/pressure"], ensure_ascii=False).encode()
    compiled, python = _compiled_and_python(raw, 5)
    assert compiled[0].tolist() == python[0].tolist() == [4, 2, 5, 9, 1] and compiled[1] == python[1] == 5
    repeated = _compiled_and_python(b'["a", "ch1/temp", "a", "a"]', 4)
    assert [(codes.tolist(), distinct) for codes, distinct in repeated] == [([4, 0, 4, 4], 2)] * 2
    for other in (b'["a", "zz"]', b'["a", 1]', b'["\\u0061", "a"]', b'["a" "a"]', b'["a", "a"] ]'):
        assert _compiled_and_python(other, 2) == (None, None), other
    # a name of the table that JSON escapes is never matched byte for byte
    assert _compiled_and_python(json.dumps(["tab\tname", "a"]).encode(), 2) == (None, None)
    assert _compiled_and_python(b'["a", "a"]', 3) == (None, None)  # not as many as the rows


def test_the_slots_hash_what_the_compiled_pass_hashes():
    """A table whose names share their hashed bytes still finds each (probing, then bytes)."""
    crowded = arrayscan.NameTable([f"x{i:03d}-same-end" for i in range(300)])
    raw = orjson.dumps(crowded.names[::-1])
    arrayscan.warm()
    found = arrayscan.name_codes(raw, crowded, 300)
    assert found is not None and found[0].tolist() == list(range(299, -1, -1)) and found[1] == 300
    assert np.array_equal(found[0], arrayscan._with_python(raw, crowded, 300)[0])


@st.composite
def int_arrays(draw) -> tuple[bytes, int]:
    items = draw(st.lists(st.integers(-(10**19), 10**19) | st.sampled_from([10**18 - 1, -(10**18) + 1, 10**18, 0])
                          | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.text(max_size=3),
                          max_size=8))
    sep = draw(spaces)
    text = draw(spaces) + "[" + sep + ("," + sep).join(json.dumps(i) for i in items) + sep + "]" + draw(spaces)
    raw = text.encode()
    if draw(st.integers(0, 5)) == 0:  # bytes cut, doubled or damaged
        raw = draw(st.sampled_from([raw[:-1], raw + raw, raw.replace(b",", b";", 1), raw.replace(b"1", b"1e1", 1)]))
    return raw, draw(st.sampled_from([len(items), len(items) + 1, max(0, len(items) - 1)]))


@settings(max_examples=400, deadline=None)
@given(case=int_arrays())
def test_integers_compiled_and_python_agree_and_mean_the_json(case):
    raw, rows = case
    arrayscan.warm()
    compiled, python = arrayscan.int64s(raw, rows), arrayscan._ints_with_python(raw, rows)
    assert (compiled is None) == (python is None), (raw, compiled, python)
    if compiled is None:
        return
    assert compiled.dtype == np.int64 and compiled.tolist() == python.tolist() == orjson.loads(raw)
    assert len(compiled) == rows


@st.composite
def compact_int_arrays(draw) -> tuple[bytes, int]:
    """Integers as gateways send them (no space; timestamps of 13 digits, and every length up to
    19), whole, or cut, run on or with a byte damaged: for the pass that reads eight digits at a
    time."""
    digits = st.integers(1, 19).flatmap(lambda d: st.integers(10 ** (d - 1) if d > 1 else 0, 10**d - 1))
    items = draw(st.lists(digits | st.integers(1_764_000_000_000, 1_764_999_999_999) | st.integers(-(10**18), -1),
                          max_size=12))
    raw = json.dumps(items, separators=(",", ":")).encode()
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        raw = draw(st.sampled_from([raw[:at], raw[:at] + b"0" + raw[at:], raw[:at] + b"x" + raw[at + 1:],
                                    raw[:at] + b"." + raw[at + 1:], raw[:-1] + b",7]", raw + b"]"]))
    return raw, draw(st.sampled_from([len(items), len(items) + 1, max(0, len(items) - 1)]))


@settings(max_examples=600, deadline=None)
@given(case=compact_int_arrays())
def test_compact_integers_read_in_words_agree_with_python_and_the_careful_pass(case):
    raw, rows = case
    arrayscan.warm()
    compiled, python = arrayscan.int64s(raw, rows), arrayscan._ints_with_python(raw, rows)
    careful = np.empty(rows, np.int64)
    careful_found = arrayscan._compiled_ints(np.frombuffer(raw, np.uint8), careful)
    assert (compiled is None) == (careful_found != rows), (raw, compiled, careful_found)
    if compiled is not None:
        assert compiled.tolist() == careful.tolist()
        if python is not None:
            assert compiled.tolist() == python.tolist() == orjson.loads(raw)


def test_compact_integers_are_read_in_words_and_other_forms_left_to_the_careful_pass():
    arrayscan.warm()

    def read(raw: bytes, rows: int) -> tuple[list[int], int]:
        out = np.zeros(rows, np.int64)
        found = arrayscan._compiled_ints_words(*arrayscan._as_words(raw), out)
        return out.tolist(), found

    values = [1764000000000, 0, 7, 12345678, 123456789, 1234567890123456, 99999999]
    assert read(json.dumps(values, separators=(",", ":")).encode(), 7) == (values, 7)
    assert read(b"[]", 0) == ([], 0)
    for other in (b"[1, 2]", b"[-1]", b"[01]", b"[12345678901234567]", b"[1.5]", b"[1,]", b"[1"):
        assert read(other, 2)[1] == arrayscan.NOT_SIMPLE, other


def test_plain_integers_are_read_and_anything_else_is_left_to_the_decoder():
    arrayscan.warm()
    raw = b"[1764000000000, -5,0,-0, 999999999999999999]"
    assert arrayscan.int64s(raw, 5).tolist() == [1764000000000, -5, 0, 0, 999999999999999999]
    for other in (b"[1.0, 2]", b"[1e3, 2]", b"[1000000000000000000, 2]", b'["1", 2]', b"[true, 2]", b"[1 2]",
                  b"[1, 2] 3", b"[1, 2, 3]", b"[1]"):
        assert arrayscan.int64s(other, 2) is None, other
        assert arrayscan._ints_with_python(other, 2) is None, other


@st.composite
def decimal_arrays(draw) -> tuple[bytes, bool]:
    """Arrays of numbers as JSON may write them, and whether each is a plain decimal the
    compiled pass must read (no exponent, at most 15 significant digits and 22 after the point,
    written compactly); some cut, doubled or damaged."""
    plain = True
    items = []
    for _ in range(draw(st.integers(0, 8))):
        sign = draw(st.sampled_from(["", "-"]))
        whole = draw(st.sampled_from(["0"]) | st.integers(1, 10**18).map(str))
        point = draw(st.sampled_from(["", ""]) | st.text("0123456789", min_size=1, max_size=25).map(lambda d: "." + d))
        exponent = draw(st.sampled_from([""] * 6 + ["e5", "E-3", "e+2", "e400"]))
        digits = (whole + point[1:]).lstrip("0")
        if exponent or len(digits) > 15 or len(point) - 1 > 22:
            plain = False
        items.append(sign + whole + point + exponent)
    sep = draw(st.sampled_from([",", ",", ", "]))
    plain = plain and sep == ","
    raw = ("[" + sep.join(items) + "]").encode()
    if draw(st.integers(0, 6)) == 0:
        plain = False
        raw = draw(st.sampled_from([raw[:-1], raw + raw, raw.replace(b",", b",,", 1), raw.replace(b"1", b"01", 1),
                                    raw.replace(b"[", b"[.", 1), raw.replace(b"0", b"-", 1), b"[1.]", b"[-]", b"[]"]))
    return raw, plain


def _bits(values) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


@settings(max_examples=800, deadline=None)
@given(case=decimal_arrays())
def test_plain_decimals_are_read_exactly_as_json_means_them_and_the_rest_left_to_the_decoder(case):
    raw, plain = case
    arrayscan.warm()
    compiled = arrayscan.float64s(raw)
    try:
        decoded = msgspec.json.decode(raw, type=list[float])
    except msgspec.DecodeError:
        decoded = None
    if compiled is not None:  # only what the decoder takes, and bit for bit its value (-0.0 too)
        assert decoded is not None and _bits(compiled) == _bits(decoded), (raw, compiled, decoded)
    if plain and decoded:  # what sensors send is read here, not by the decoder
        assert compiled is not None, raw


def test_decimals_near_the_limits_of_the_exact_reading():
    arrayscan.warm()
    for text in ("0.1", "0.3", "-0.0", "-0", "5", "999999999999999", "0.000000000000000000001", "90071992547.0993",
                 "123456789012.345", "1.7976931348623", "4.9406564584124"):
        assert _bits(arrayscan.float64s(f"[{text}]".encode())) == _bits([float(text) if text != "-0" else 0.0]), text
    for past in ("9999999999999999", "1.0000000000000001", "0.00000000000000000000001", "1e1", "1E-1"):
        assert arrayscan.float64s(f"[{past}]".encode()) is None, past  # the decoder reads these
