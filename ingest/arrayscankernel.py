"""`ingest.arrayscan.name_codes` and `int64s` as compiled passes (see that module for why). Loaded only
by `ingest.arrayscan.warm`: importing numba costs a process seconds."""

from __future__ import annotations

import numba
import numpy as np

# ingest.arrayscan.slot_hash's constants
_K_HEAD, _K_LENGTH = np.uint64(0x9E3779B97F4A7C15), np.uint64(0x165667B19E3779F9)
_HEAD_BYTES = 8  # ingest.arrayscan.HEAD_BYTES
_QUOTE, _BACKSLASH, _COMMA, _OPEN, _CLOSE, _MINUS, _ZERO, _NINE = 34, 92, 44, 91, 93, 45, 48, 57
_MAX_DIGITS = 18  # ingest.arrayscan.MAX_DIGITS


@numba.njit(cache=True)
def _skip_space(raw: np.ndarray, i: int) -> int:
    while i < len(raw) and (raw[i] == 32 or raw[i] == 9 or raw[i] == 10 or raw[i] == 13):
        i += 1
    return i


# `_first_item` and `_next_item` answers besides a position (or -1: not such an array)
_EMPTY = -2  # "[]" and nothing after it
_DONE = -3  # the array closed after the last item, and nothing after it


@numba.njit(cache=True)
def _first_item(raw: np.ndarray) -> int:
    """Where the JSON array's first item starts; `_EMPTY`; or -1."""
    i = _skip_space(raw, 0)
    if i >= len(raw) or raw[i] != _OPEN:
        return -1
    i = _skip_space(raw, i + 1)
    if i < len(raw) and raw[i] == _CLOSE:
        return _EMPTY if _skip_space(raw, i + 1) == len(raw) else -1
    return i


@numba.njit(cache=True)
def _next_item(raw: np.ndarray, i: int) -> int:
    """After an item that ended before `i`: where the next item starts; `_DONE`; or -1."""
    i = _skip_space(raw, i)
    if i >= len(raw):
        return -1
    if raw[i] == _CLOSE:
        return _DONE if _skip_space(raw, i + 1) == len(raw) else -1
    if raw[i] != _COMMA:
        return -1
    return _skip_space(raw, i + 1)


@numba.njit(cache=True)
def name_codes(raw: np.ndarray, slots: np.ndarray, heads: np.ndarray, blob: np.ndarray, starts: np.ndarray,
               out: np.ndarray) -> tuple[int, int]:
    """The codes of the names of the JSON array `raw` into `out`; how many, and how many
    distinct names among them; or -1 (and 0) when the array is not plain known names (see
    `ingest.arrayscan.name_codes`) or holds more than `out`."""
    mask = len(slots) - 1
    seen = np.zeros(len(starts) - 1, np.uint8)
    distinct = 0
    end = len(raw)
    i = _first_item(raw)
    if i < 0:
        return (0, 0) if i == _EMPTY else (-1, 0)
    count = 0
    while True:
        if i >= end or raw[i] != _QUOTE:
            return -1, 0
        i += 1
        begin = i
        # The name's first 8 bytes as a little-endian word, then the rest up to its quote.
        head = np.uint64(0)
        shift = np.uint64(0)
        while i < end and i - begin < _HEAD_BYTES:
            byte = raw[i]
            if byte == _QUOTE:
                break
            if byte == _BACKSLASH or byte < 32:
                return -1, 0
            head |= np.uint64(byte) << shift
            shift += np.uint64(8)
            i += 1
        while i < end and raw[i] != _QUOTE:
            byte = raw[i]
            if byte == _BACKSLASH or byte < 32:
                return -1, 0
            i += 1
        if i >= end:
            return -1, 0
        length = i - begin
        h = (head * _K_HEAD) ^ (np.uint64(length) * _K_LENGTH)
        h ^= h >> np.uint64(32)
        slot = np.int64(h & np.uint64(mask))
        while True:
            code = slots[slot]
            if code < 0:
                return -1, 0
            start = starts[code]
            if heads[code] == head and starts[code + 1] - start == length:
                same = True
                for k in range(_HEAD_BYTES, length):  # the first 8 are the same word
                    if blob[start + k] != raw[begin + k]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + 1) & mask
        if count >= len(out):
            return -1, 0
        out[count] = code
        distinct += 1 - seen[code]
        seen[code] = 1
        count += 1
        i = _next_item(raw, i + 1)
        if i < 0:
            return (count, distinct) if i == _DONE else (-1, 0)


@numba.njit(cache=True)
def int64s(raw: np.ndarray, out: np.ndarray) -> int:
    """The integers of the JSON array `raw` into `out`; how many, or -1 when the array is not
    plain integers of at most `_MAX_DIGITS` digits (see `ingest.arrayscan.int64s`) or holds more than `out`."""
    end = len(raw)
    i = _first_item(raw)
    if i < 0:
        return 0 if i == _EMPTY else -1
    count = 0
    while True:
        negative = i < end and raw[i] == _MINUS
        if negative:
            i += 1
        begin = i
        value = 0
        while i < end and _ZERO <= raw[i] <= _NINE:
            value = value * 10 + (raw[i] - _ZERO)
            i += 1
        if i == begin or i - begin > _MAX_DIGITS:
            return -1
        if count >= len(out):
            return -1
        out[count] = -value if negative else value
        count += 1
        i = _next_item(raw, i)
        if i < 0:
            return count if i == _DONE else -1
