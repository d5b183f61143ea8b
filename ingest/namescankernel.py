"""`ingest.namescan.name_codes` as one compiled pass (see that module for why). Loaded only
by `ingest.namescan.warm`: importing numba costs a process seconds."""

from __future__ import annotations

import numba
import numpy as np

_OFFSET = np.uint64(0xCBF29CE484222325)
_PRIME = np.uint64(0x100000001B3)
_HASHED_END = 8  # ingest.namescan.HASHED_END
_QUOTE, _BACKSLASH, _COMMA, _OPEN, _CLOSE = 34, 92, 44, 91, 93


@numba.njit(cache=True)
def _skip_space(raw: np.ndarray, i: int) -> int:
    while i < len(raw) and (raw[i] == 32 or raw[i] == 9 or raw[i] == 10 or raw[i] == 13):
        i += 1
    return i


@numba.njit(cache=True)
def name_codes(raw: np.ndarray, slots: np.ndarray, blob: np.ndarray, starts: np.ndarray,
               out: np.ndarray) -> int:
    """The codes of the names of the JSON array `raw` into `out`; how many, or -1 when the
    array is not plain known names (see `ingest.namescan.name_codes`) or holds more than `out`."""
    mask = len(slots) - 1
    i = _skip_space(raw, 0)
    if i >= len(raw) or raw[i] != _OPEN:
        return -1
    i = _skip_space(raw, i + 1)
    if i < len(raw) and raw[i] == _CLOSE:
        return 0 if _skip_space(raw, i + 1) == len(raw) else -1
    count = 0
    while True:
        if i >= len(raw) or raw[i] != _QUOTE:
            return -1
        i += 1
        begin = i
        while i < len(raw) and raw[i] != _QUOTE:
            byte = raw[i]
            if byte == _BACKSLASH or byte < 32:
                return -1
            i += 1
        if i >= len(raw):
            return -1
        length = i - begin
        h = _OFFSET
        for k in range(begin, begin + min(length, _HASHED_END)):
            h = (h ^ np.uint64(raw[k])) * _PRIME
        for k in range(i - min(length, _HASHED_END), i):
            h = (h ^ np.uint64(raw[k])) * _PRIME
        h = (h ^ np.uint64(length)) * _PRIME
        slot = np.int64(h & np.uint64(mask))
        while True:
            code = slots[slot]
            if code < 0:
                return -1
            start = starts[code]
            if starts[code + 1] - start == length:
                same = True
                for k in range(length):
                    if blob[start + k] != raw[begin + k]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + 1) & mask
        if count >= len(out):
            return -1
        out[count] = code
        count += 1
        i = _skip_space(raw, i + 1)
        if i >= len(raw):
            return -1
        if raw[i] == _CLOSE:
            return count if _skip_space(raw, i + 1) == len(raw) else -1
        if raw[i] != _COMMA:
            return -1
        i = _skip_space(raw, i + 1)
