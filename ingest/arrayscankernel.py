"""`ingest.arrayscan.name_codes`, `int64s` and `float64s` as compiled passes (see that module for why). Loaded only
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
def _same_bytes(blob: np.ndarray, start: int, raw: np.ndarray, begin: int, first: int, length: int) -> bool:
    """Whether bytes `first:length` of the name at `blob[start:]` and at `raw[begin:]` agree."""
    for k in range(first, length):
        if blob[start + k] != raw[begin + k]:
            return False
    return True


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
            # the first 8 bytes are the same word
            if heads[code] == head and starts[code + 1] - start == length and \
                    _same_bytes(blob, start, raw, begin, _HEAD_BYTES, length):
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


_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
_QUOTES, _BACKSLASHES, _SPACES = (np.uint64(0x2222222222222222), np.uint64(0x5C5C5C5C5C5C5C5C),
                                   np.uint64(0x2020202020202020))
_NOT_SIMPLE = -2  # ingest.arrayscan.NOT_SIMPLE: not the compact form; the careful pass decides
_U1, _U3, _U7, _U8, _U56, _U63 = (np.uint64(v) for v in (1, 3, 7, 8, 56, 63))


@numba.njit(cache=True)
def _word_at(words: np.ndarray, p: int) -> np.uint64:
    """The 8 bytes of `words` (viewed as bytes) from byte `p`, as a little-endian word. Without
    a branch on the offset: the second word goes up by 1 and then 63 - s bits, which for s = 0
    leaves nothing of it (a shift by 64 is undefined)."""
    j = p >> 3
    s = np.uint64(p & 7) << _U3
    return (words[j] >> s) | ((words[j + 1] << _U1) << (_U63 - s))


# `_low_bytes`'s masks, by the number of bytes kept (0 to 8)
_LOW_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


@numba.njit(cache=True)
def _bytes_below(flags: np.uint64) -> int:
    """How many bytes lie below the lowest byte whose high bit `flags` sets (flags: high bits
    only): the bytes under it become 0xFF, and a multiplication sums their low bits."""
    lowest = flags & (~flags + _U1)
    below = (lowest >> _U7) - _U1
    return int(np.int64(((below & _ONES) * _ONES) >> _U56))  # signed: mixed with unsigned, numba makes floats


@numba.njit(cache=True)
def _low_bytes(word: np.uint64, count: int) -> np.uint64:
    """The lowest `count` bytes of `word`: none below 1, all of it from 8 on."""
    return word & _LOW_MASKS[min(max(count, 0), 8)]


@numba.njit(cache=True)
def name_codes_by_words(raw: np.ndarray, words: np.ndarray, n: int, slots: np.ndarray, heads: np.ndarray,
                        tails: np.ndarray, blob: np.ndarray, starts: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """`name_codes` for the compact form gateways send (`["a","b"]`: no space, no backslash, no
    control byte anywhere), eight bytes at a time: the closing quote of a name is found in
    whole words (the bytes equal to a quote, by the carry trick), and the name compared with
    the table's as one to three words (`heads`, then `tails`). Why: a byte at a time, the end
    of each name (8 to 18 bytes, as they come) was a mispredicted branch: 15 us a message of
    500 names, 11 of them finding the quotes. `_NOT_SIMPLE` (and 0) for any other form: the
    careful pass (`name_codes`) answers it, with the same answers for every form.

    `raw` is the array's `n` bytes and at least 24 more (zeros, `ingest.arrayscan.name_codes`),
    `words` the same memory as words: a name's last words may read past the array's end."""
    if n < 2 or raw[0] != _OPEN or raw[n - 1] != _CLOSE:
        return _NOT_SIMPLE, 0
    for j in range(n // 8):  # a backslash or a byte below 32 (a space too): a word at a time
        w = words[j]
        x = w ^ _BACKSLASHES
        if ((x - _ONES) & ~x & _HIGHS) | ((w - _SPACES) & ~w & _HIGHS):
            return _NOT_SIMPLE, 0
    for i in range(n // 8 * 8, n):
        if raw[i] == _BACKSLASH or raw[i] < 32:
            return _NOT_SIMPLE, 0
    if n == 2:
        return 0, 0
    mask = len(slots) - 1
    seen = np.zeros(len(starts) - 1, np.uint8)
    count = distinct = 0
    i = 1
    while True:
        if raw[i] != _QUOTE:
            return _NOT_SIMPLE, 0
        begin = i + 1
        p = begin
        while True:
            if p >= n:  # no closing quote
                return _NOT_SIMPLE, 0
            x = _word_at(words, p) ^ _QUOTES
            quotes = (x - _ONES) & ~x & _HIGHS  # exact up to the first quote, which is all we read
            if quotes:
                p += _bytes_below(quotes)
                break
            p += 8
        if p >= n - 1:
            return _NOT_SIMPLE, 0
        length = p - begin
        # The name as three words (zero past its end), compared whole: no branch on its length
        # (8 to 18 bytes, as they come), which a byte at a time mispredicted once a name.
        head = _low_bytes(_word_at(words, begin), length)
        second = _low_bytes(_word_at(words, begin + 8), length - 8)
        third = _low_bytes(_word_at(words, begin + 16), length - 16)
        h = (head * _K_HEAD) ^ (np.uint64(length) * _K_LENGTH)
        h ^= h >> np.uint64(32)
        slot = np.int64(h & np.uint64(mask))
        while True:
            code = slots[slot]
            if code < 0:
                return -1, 0
            start = starts[code]
            same = ((heads[code] == head) & (starts[code + 1] - start == length) & (tails[code, 0] == second)
                    & (tails[code, 1] == third))
            if same and (length <= 24 or _same_bytes(blob, start, raw, begin, 24, length)):  # a longer name's rest
                break
            slot = (slot + 1) & mask
        if count >= len(out):
            return -1, 0
        out[count] = code
        distinct += 1 - seen[code]
        seen[code] = 1
        count += 1
        after = raw[p + 1]
        if after == _COMMA:
            i = p + 2
        elif after == _CLOSE and p + 2 == n:
            return count, distinct
        else:
            return _NOT_SIMPLE, 0


_ZEROS = np.uint64(0x3030303030303030)
_NOT_DIGIT_ADD = np.uint64(0x4646464646464646)
_POWERS_OF_TEN = np.array([10 ** k for k in range(9)], dtype=np.int64)


@numba.njit(cache=True)
def _digits_in(word: np.uint64) -> int:
    """How many of the word's bytes, from the lowest, are ASCII digits (0 to 8). A byte that
    is not one has its high bit set in the sum or the difference (exact up to the first such
    byte: a carry or borrow only reaches the bytes after it)."""
    flags = ((word + _NOT_DIGIT_ADD) | (word - _ZEROS)) & _HIGHS
    if flags == 0:
        return 8
    return _bytes_below(flags)


@numba.njit(cache=True)
def _value_of_digits(word: np.uint64, count: int) -> int:
    """The number the lowest `count` (1 to 8) bytes of the word write in ASCII digits, the
    first the most significant: moved to the top bytes over '0's, then combined in pairs,
    fours and eights by three multiplications."""
    shift = np.uint64(8 - count) << _U3
    w = ((word << shift) | (_ZEROS & _LOW_MASKS[8 - count])) - _ZEROS
    w = (w * np.uint64(10) + (w >> _U8)) & np.uint64(0x00FF00FF00FF00FF)
    w = (w * np.uint64(100) + (w >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    w = (w * np.uint64(10000) + (w >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return int(np.int64(w))


@numba.njit(cache=True)
def int64s_by_words(raw: np.ndarray, words: np.ndarray, n: int, out: np.ndarray) -> int:
    """`int64s` for the compact form gateways send (`[1764000000000,1764000000100]`: no space,
    no sign, up to 16 digits, no leading zero), eight digits at a time; `_NOT_SIMPLE` for any
    other form, which the careful pass (`int64s`) answers. `raw` and `words` as for
    `name_codes_by_words`."""
    if n < 2 or raw[0] != _OPEN or raw[n - 1] != _CLOSE:
        return _NOT_SIMPLE
    if n == 2:
        return 0
    count = 0
    i = 1
    while True:
        first = _word_at(words, i)
        digits = _digits_in(first)
        if digits == 0 or (digits > 1 and raw[i] == _ZERO):
            return _NOT_SIMPLE
        if digits < 8:
            value = _value_of_digits(first, digits)
        else:
            more = _digits_in(_word_at(words, i + 8))
            if more == 8 and _ZERO <= raw[i + 16] <= _NINE:
                return _NOT_SIMPLE  # over 16 digits
            value = _value_of_digits(first, 8)
            if more:
                value = value * _POWERS_OF_TEN[more] + _value_of_digits(_word_at(words, i + 8), more)
            digits += more
        if count >= len(out):
            return -1
        out[count] = value
        count += 1
        i += digits
        after = raw[i]
        if after == _COMMA:
            i += 1
        elif after == _CLOSE and i == n - 1:
            return count
        else:
            return _NOT_SIMPLE


@numba.njit(cache=True)
def _digit_run(raw: np.ndarray, i: int, value: int, significant: int) -> tuple[int, int, int]:
    """The ASCII digits from `i` on appended to `value`; where they end, the value, and
    `significant` plus the digits counted from the first that made the value nonzero."""
    while i < len(raw) and _ZERO <= raw[i] <= _NINE:
        value = value * 10 + (raw[i] - _ZERO)
        significant += value != 0
        i += 1
    return i, value, significant


@numba.njit(cache=True)
def _signed_digits(raw: np.ndarray, i: int) -> tuple[bool, int, int, int, int]:
    """A number's optional minus and its first run of digits from `i`: whether negative, where
    the digits begin and end, their value, and how many are significant (`_digit_run`)."""
    negative = i < len(raw) and raw[i] == _MINUS
    begin = i + 1 if negative else i
    end, value, significant = _digit_run(raw, begin, 0, 0)
    return negative, begin, end, value, significant


@numba.njit(cache=True)
def int64s(raw: np.ndarray, out: np.ndarray) -> int:
    """The integers of the JSON array `raw` into `out`; how many, or -1 when the array is not
    plain integers of at most `_MAX_DIGITS` digits (see `ingest.arrayscan.int64s`) or holds more than `out`."""
    i = _first_item(raw)
    if i < 0:
        return 0 if i == _EMPTY else -1
    count = 0
    while True:
        negative, begin, i, value, _ = _signed_digits(raw, i)
        if i == begin or i - begin > _MAX_DIGITS:
            return -1
        if count >= len(out):
            return -1
        out[count] = -value if negative else value
        count += 1
        i = _next_item(raw, i)
        if i < 0:
            return count if i == _DONE else -1


_DOT, _E_LOWER, _E_UPPER = 46, 101, 69
_MAX_SIGNIFICANT = 15  # digits whose integer a float64 always holds exactly (< 2**53)
_MAX_FRACTION = 22  # the largest power of ten a float64 holds exactly: 1e22
_EXACT_POWERS_OF_TEN = np.array([float(10**k) for k in range(_MAX_FRACTION + 1)], dtype=np.float64)


@numba.njit(cache=True)
def float64s(raw: np.ndarray, out: np.ndarray) -> int:
    """The numbers of the JSON array `raw` into `out`, each the float64 nearest to what it
    writes; how many, or -1 when the array is not plain decimals this pass reads exactly (see
    `ingest.arrayscan.float64s`) or holds more than `out`.

    Exact by Clinger's fast path: a decimal of at most 15 significant digits and at most 22
    after the point is m / 10**k with m and 10**k both exact float64 values, and IEEE division
    rounds their quotient correctly, so it is the nearest float64, as a correct parser's. An
    exponent, more digits, a leading zero or anything else: -1."""
    end = len(raw)
    i = _first_item(raw)
    if i < 0:
        return 0 if i == _EMPTY else -1
    count = 0
    while True:
        negative, begin, i, mantissa, significant = _signed_digits(raw, i)
        if i == begin or (raw[begin] == _ZERO and i - begin > 1):  # no digit, or a leading zero
            return -1
        fraction = 0
        if i < end and raw[i] == _DOT:
            point = i + 1
            i, mantissa, significant = _digit_run(raw, point, mantissa, significant)
            fraction = i - point
            if fraction == 0:
                return -1
        if significant > _MAX_SIGNIFICANT or fraction > _MAX_FRACTION:
            return -1
        if i < end and (raw[i] == _E_LOWER or raw[i] == _E_UPPER):
            return -1
        if count >= len(out):
            return -1
        value = mantissa / _EXACT_POWERS_OF_TEN[fraction]
        # JSON's -0 is the integer 0 (+0.0 as a float); -0.0 is the float -0.0.
        out[count] = -value if negative and (fraction > 0 or mantissa != 0) else value
        count += 1
        i = _next_item(raw, i)
        if i < 0:
            return count if i == _DONE else -1
