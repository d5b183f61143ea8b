"""A trail read as a table (core.jsonltable): what was appended since the last read is added,
a torn line is skipped, and a replaced or truncated file is read again from the start."""

import os

import orjson
import pyarrow as pa

from core.fsutil import append_lines
from core.jsonltable import JsonlTable

SCHEMA = pa.schema([("n", pa.int64()), ("word", pa.string())])


def lines(*rows):
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def rows(path):
    return JsonlTable(path, SCHEMA).table().to_pylist()


def test_appends_are_added_and_a_torn_line_skipped(tmp_path):
    path = tmp_path / "trail.jsonl"
    assert rows(path) == []
    append_lines(path, lines({"n": 1, "word": "a"}, {"n": 2, "word": "b"}))
    assert rows(path) == [{"n": 1, "word": "a"}, {"n": 2, "word": "b"}]
    with open(path, "ab") as handle:  # a writer mid-line (or a crash): not a row yet
        handle.write(b'{"n": 3, "wo')
    assert [r["n"] for r in rows(path)] == [1, 2]
    append_lines(path, lines({"n": 4, "word": "d"}))  # after a crash: the torn line stays torn
    assert [r["n"] for r in rows(path)] == [1, 2, 4]
    for n in range(5, 200):  # many reads that each find new lines: chunks are combined
        append_lines(path, lines({"n": n, "word": None}))
        assert rows(path)[-1] == {"n": n, "word": None}
    table = JsonlTable(path, SCHEMA).table()
    assert table.num_rows == 3 + 195 and table.column(0).num_chunks <= 65


def test_a_replaced_or_shortened_file_is_read_again(tmp_path):
    path = tmp_path / "trail.jsonl"
    append_lines(path, lines({"n": 1, "word": "a"}, {"n": 2, "word": "b"}))
    assert len(rows(path)) == 2
    other = tmp_path / "new.jsonl"
    other.write_bytes(lines({"n": 7, "word": "x"}, {"n": 8, "word": "y"}, {"n": 9, "word": "z"}))
    os.replace(other, path)  # another inode, longer than what was read
    assert [r["n"] for r in rows(path)] == [7, 8, 9]
    with open(path, "r+b") as handle:  # the same inode, shorter
        handle.truncate(0)
        handle.write(lines({"n": 5, "word": "e"}))
    assert [r["n"] for r in rows(path)] == [5]
    path.unlink()
    assert rows(path) == []
