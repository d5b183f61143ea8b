"""A batch's sensor names as codes, read from the payload's bytes: the JSON array of names,
as the message holds it, looked up in a table of a machine's known names without making a
Python string of each.

Why: at fab scale (100,000 sensors: 1,000 machines at 10 Hz) no message repeats its
interleaving of sensors, so every message's 500 names were made into strings by the JSON
parser, hashed and looked up one by one: 28 us of a 162 us message, and 20 us more for
the parser's strings and the tuple by which a repeating interleaving is found (in process,
`python` over 8,000 messages of that stream). One compiled pass over the array's bytes
does it in a few microseconds. It reads only what is simply a known name: an escape, a
control character, a name not in the table or anything but a string, and it answers None,
and the general decoder (`ingest.codec`) decides, with its reasons. Compiled once `warm()`
has run (beside recovery, as `ingest.grouping`); until then, and in processes that never warm
it, a Python reading gives the same answers.

Pure: bytes and arrays in, arrays out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import orjson

# A name's slot in the table: 64-bit FNV-1a over its first and last 8 bytes (at most) and
# its length, what the compiled pass computes once it has found the name's end. Not every
# byte: a chain of multiplications over each byte of a message's names took 10 of its 20 us;
# names that share their ends only share a probe sequence (a slot is confirmed by comparing
# every byte).
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
HASHED_END = 8


def slot_hash(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data[:HASHED_END] + data[-HASHED_END:]:
        h = ((h ^ byte) * FNV_PRIME) & _MASK64
    return ((h ^ len(data)) * FNV_PRIME) & _MASK64


class NameTable:
    """A set of names (in code order) as the compiled pass reads them: their UTF-8 bytes end
    to end (`blob`, name i at `starts[i]:starts[i + 1]`) and an open-addressing table of
    their hashes (`slots`: a code, or -1 for an empty slot; linear probing)."""

    __slots__ = ("names", "index", "blob", "starts", "slots")

    def __init__(self, names: list[str], index: dict[str, int] | None = None) -> None:
        self.names = names
        self.index = index if index is not None else {name: code for code, name in enumerate(names)}
        encoded = [name.encode() for name in names]
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        self.starts = np.zeros(len(names) + 1, dtype=np.int64)
        self.starts[1:] = np.cumsum([len(e) for e in encoded])
        size = 8
        while size < 2 * len(names):
            size *= 2
        self.slots = np.full(size, -1, dtype=np.int32)
        for code, data in enumerate(encoded):
            slot = slot_hash(data) & (size - 1)
            while self.slots[slot] >= 0:
                slot = (slot + 1) & (size - 1)
            self.slots[slot] = code


Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], int]
_compiled: Kernel | None = None
_warming = threading.Lock()


def name_codes(raw: bytes, table: NameTable, rows: int) -> np.ndarray | None:
    """Each name of `raw` (a JSON array of strings, its bytes as the payload holds them) as its
    code in `table`, when the array is exactly `rows` names of the table written without an
    escape or a control character; else None."""
    kernel = _compiled
    if kernel is not None:
        out = np.empty(rows, dtype=np.uint32)
        found = kernel(np.frombuffer(raw, dtype=np.uint8), table.slots, table.blob, table.starts, out)
        return out if found == rows else None
    return _with_python(raw, table, rows)


def _with_python(raw: bytes, table: NameTable, rows: int) -> np.ndarray | None:
    if b"\\" in raw:  # an escape (a control character in a string: JSON's error, below)
        return None
    try:
        names = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(names) is not list or len(names) != rows or not all(type(name) is str for name in names):
        return None
    try:
        return np.fromiter(map(table.index.__getitem__, names), dtype=np.uint32, count=rows)
    except KeyError:
        return None


def warm() -> None:
    """Compile the kernel (or load it from numba's cache) and use it from now on."""
    global _compiled
    with _warming:
        if _compiled is None:
            from ingest import namescankernel  # imports numba
            table = NameTable(["a"])
            namescankernel.name_codes(np.frombuffer(b'["a"]', np.uint8), table.slots, table.blob, table.starts,
                                      np.empty(1, np.uint32))
            _compiled = namescankernel.name_codes
