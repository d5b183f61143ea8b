"""A batch payload's arrays read from its bytes, as the message holds them, by compiled passes:
the sensor names as codes, looked up in a table of a machine's known names without making a
Python string of each (`name_codes`), and integer timestamps into an int64 array without a
Python int of each (`int64s`).

Why: at fab scale (100,000 sensors: 1,000 machines at 10 Hz) no message repeats its
interleaving of sensors, so every message's 500 names were made into strings by the JSON
parser, hashed and looked up one by one: 28 us of a 162 us message, and 20 us more for
the parser's strings and the tuple by which a repeating interleaving is found (in process,
`python` over 8,000 messages of that stream). One compiled pass over the array's bytes
does it in a few microseconds. It reads only what is simply a known name: an escape, a
control character, a name not in the table or anything but a string, and it answers None,
and the general decoder (`ingest.codec`) decides, with its reasons. Values alike (`float64s`):
plain decimals, read exactly, the rest left to the decoder. Integers alike: only
plain ones of up to 18 digits (a timestamp in milliseconds has 13), exactly; a fraction, an
exponent or anything else is left to the general decoder (12 us of a message were its 500
Python ints and their conversion to an array). Compiled once `warm()`
has run (beside recovery, as the hot ring's writes); until then, and in processes that never warm
it, a Python reading gives the same answers.

Pure: bytes and arrays in, arrays out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import orjson

# A name's slot in the table: its first 8 bytes (at most), read as a little-endian word, and
# its length, mixed by multiplication; what the compiled pass computes as it reads the name.
# Not a hash of every byte: FNV-1a's chain of multiplications, one a byte over a message's
# 500 names, was half of the pass's time. The table keeps each name's word (`heads`), so a
# slot is confirmed by the word, the length and the bytes after the first 8; names that
# share their word and length only share a probe sequence.
HEAD_BYTES = 8
_K_HEAD, _K_LENGTH = 0x9E3779B97F4A7C15, 0x165667B19E3779F9
_MASK64 = (1 << 64) - 1


def head_word(data: bytes) -> int:
    return int.from_bytes(data[:HEAD_BYTES], "little")


def slot_hash(data: bytes) -> int:
    h = ((head_word(data) * _K_HEAD) ^ (len(data) * _K_LENGTH)) & _MASK64
    return h ^ (h >> 32)


class NameTable:
    """A set of names (in code order) as the compiled pass reads them: their UTF-8 bytes end
    to end (`blob`, name i at `starts[i]:starts[i + 1]`) and an open-addressing table of
    their hashes (`slots`: a code, or -1 for an empty slot; linear probing), and each one's
    first 8 bytes as a word (`heads`, see `slot_hash`)."""

    __slots__ = ("names", "index", "blob", "starts", "slots", "heads", "tails")

    def __init__(self, names: list[str], index: dict[str, int] | None = None) -> None:
        self.names = names
        self.index = index if index is not None else {name: code for code, name in enumerate(names)}
        encoded = [name.encode() for name in names]
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        self.starts = np.zeros(len(names) + 1, dtype=np.int64)
        self.starts[1:] = np.cumsum([len(e) for e in encoded])
        # Eight slots a name: a probe past the first is a mispredicted branch (a fab's 100 names:
        # 1.37 probes a name at two slots a name, 1.01 at eight; the compact pass 11.1 -> 9.7 us
        # a message of 500 names).
        size = 8
        while size < 8 * len(names):
            size *= 2
        self.heads = np.array([head_word(data) for data in encoded], dtype=np.uint64)
        # Bytes 8-15 and 16-23 of each name as words, zero beyond its end (the compact pass
        # compares a name in words).
        self.tails = np.array([[head_word(data[8:]), head_word(data[16:])] for data in encoded],
                              dtype=np.uint64).reshape(len(encoded), 2)
        self.slots = np.full(size, -1, dtype=np.int32)
        for code, data in enumerate(encoded):
            slot = slot_hash(data) & (size - 1)
            while self.slots[slot] >= 0:
                slot = (slot + 1) & (size - 1)
            self.slots[slot] = code


Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[int, int]]
IntKernel = Callable[[np.ndarray, np.ndarray], int]
_compiled: Kernel | None = None
_compiled_words: Callable[..., tuple[int, int]] | None = None  # the compact form's pass
_compiled_ints_words: Callable[..., int] | None = None  # the same for integers
_compiled_ints: IntKernel | None = None
_compiled_floats: Callable[[np.ndarray, np.ndarray], int] | None = None  # arrayscankernel.float64s
MAX_DIGITS = 18  # what an int64 always holds
NOT_SIMPLE = -2  # arrayscankernel.name_codes_by_words: not the compact form
_PADDING = bytes(32)
_warming = threading.Lock()


def name_codes(raw: bytes, table: NameTable, rows: int) -> tuple[np.ndarray, int] | None:
    """Each name of `raw` (a JSON array of strings, its bytes as the payload holds them) as its
    code in `table`, and how many distinct names it holds, when the array is exactly `rows`
    names of the table written without an escape or a control character; else None. (The
    distinct count here, not by numpy after: numpy lets go of the interpreter lock, and taking
    it back beside the API's threads cost the ingest thread ~30 us a message.)"""
    kernel, by_words = _compiled, _compiled_words
    if kernel is not None and by_words is not None:
        out = np.empty(rows, dtype=np.uint32)
        found, distinct = by_words(*_as_words(raw), table.slots, table.heads, table.tails, table.blob, table.starts,
                                   out)
        if found == NOT_SIMPLE:  # spaces, escapes, ...: a byte at a time
            found, distinct = kernel(np.frombuffer(raw, dtype=np.uint8), table.slots, table.heads, table.blob,
                                     table.starts, out)
        return (out, distinct) if found == rows else None
    return _with_python(raw, table, rows)


def _as_words(raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """`raw` as the compact passes read it: its bytes padded with zeros to whole words and at
    least 24 bytes past its end (a name's last words may be read there), the same memory as
    bytes and as words, and the length of `raw` itself."""
    padded = raw + _PADDING[len(raw) % 8:]
    return np.frombuffer(padded, dtype=np.uint8), np.frombuffer(padded, dtype=np.uint64), len(raw)


def _with_python(raw: bytes, table: NameTable, rows: int) -> tuple[np.ndarray, int] | None:
    if b"\\" in raw:  # an escape (a control character in a string: JSON's error, below)
        return None
    names = _json_list(raw, rows, str)
    if names is None:
        return None
    try:
        return np.fromiter(map(table.index.__getitem__, names), dtype=np.uint32, count=rows), len(set(names))
    except KeyError:
        return None


def strings(raw: bytes, rows: int) -> list[str] | None:
    """The JSON array `raw` as a list when it is exactly `rows` strings; else None."""
    return _json_list(raw, rows, str)


def _json_list(raw: bytes, rows: int, kind: type) -> list | None:
    """The JSON array `raw` when it is `rows` items, each exactly of type `kind`; else None."""
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    # The types gathered in C (`map`, `set`): a generator over the items cost ~200 ns each,
    # 0.1 s for the first batches of a fab's 1,000 machines.
    if type(items) is not list or len(items) != rows or not set(map(type, items)) <= {kind}:
        return None
    return items


def int64s(raw: bytes, rows: int) -> np.ndarray | None:
    """The integers of `raw` (a JSON array, its bytes as the payload holds them) as int64, when
    it is exactly `rows` integers of at most `MAX_DIGITS` digits; else None."""
    kernel, by_words = _compiled_ints, _compiled_ints_words
    if kernel is not None and by_words is not None:
        out = np.empty(rows, dtype=np.int64)
        found = by_words(*_as_words(raw), out)
        if found == NOT_SIMPLE:  # spaces, signs, long numbers, ...: a byte at a time
            found = kernel(np.frombuffer(raw, dtype=np.uint8), out)
        return out if found == rows else None
    return _ints_with_python(raw, rows)


def _ints_with_python(raw: bytes, rows: int) -> np.ndarray | None:
    values = _json_list(raw, rows, int)
    # JSON's integers are digits with an optional minus: the number of digits is the magnitude's
    if values is None or any(abs(v) >= 10**MAX_DIGITS for v in values):
        return None
    return np.array(values, dtype=np.int64)


def float64s(raw: bytes) -> np.ndarray | None:
    """The numbers of `raw` (a JSON array, its bytes as the payload holds them) as float64, each
    exactly what a correct JSON parser makes of it, when the compiled pass reads them: plain
    decimals, no exponent, at most 15 significant digits and 22 after the point (what sensors
    send: `22.031`). Else None (and always before `warm()`): the decoder reads the array.

    Why: a batch's 500 values made into 500 Python floats by the JSON decoder and then into an
    array were the largest part of the ingest thread's time holding the interpreter lock at
    100,000 sensors (py-spy `--gil`: `_decode_plain_batch` 24 % of its samples)."""
    kernel = _compiled_floats
    if kernel is None:
        return None
    out = np.empty(raw.count(b",") + 1, dtype=np.float64)
    return out if kernel(np.frombuffer(raw, dtype=np.uint8), out) == len(out) else None


def warm() -> None:
    """Compile the kernels (or load them from numba's cache) and use them from now on."""
    global _compiled, _compiled_ints, _compiled_words, _compiled_ints_words, _compiled_floats
    with _warming:
        if _compiled is None:
            from ingest import arrayscankernel  # imports numba
            arrayscankernel.float64s(np.frombuffer(b'[1.5]', np.uint8), np.empty(1, np.float64))
            _compiled_floats = arrayscankernel.float64s
            table = NameTable(["a"])
            arrayscankernel.name_codes(np.frombuffer(b'["a"]', np.uint8), table.slots, table.heads, table.blob,
                                      table.starts, np.empty(1, np.uint32))
            arrayscankernel.name_codes_by_words(*_as_words(b'["a"]'), table.slots, table.heads, table.tails,
                                                table.blob, table.starts, np.empty(1, np.uint32))
            _compiled_words = arrayscankernel.name_codes_by_words
            arrayscankernel.int64s(np.frombuffer(b'[1]', np.uint8), np.empty(1, np.int64))
            arrayscankernel.int64s_by_words(*_as_words(b'[1]'), np.empty(1, np.int64))
            _compiled_ints_words = arrayscankernel.int64s_by_words
            _compiled_ints = arrayscankernel.int64s
            _compiled = arrayscankernel.name_codes
