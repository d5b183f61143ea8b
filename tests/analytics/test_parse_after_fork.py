"""A child forked while other threads of the process have parsed statements (the API's
request threads, the scheduler) starts and answers: the parse connections are not kept in
those threads' locals, which CPython clears in the child, running DuckDB destructors that
join threads the child does not have (a segfault inside os.fork, seen in CI)."""

from __future__ import annotations

import threading

from analytics.bounds import ts_bounds
from analytics.parsetree import parse
from fabtier.forked import call_in_fork


def _parse_and_wait(parsed: threading.Event, done: threading.Event) -> None:
    assert parse("SELECT 1") is not None
    assert ts_bounds("SELECT * FROM readings WHERE ts >= TIMESTAMP '2026-01-01'") is not None
    parsed.set()
    done.wait(60)


def test_a_child_forked_beside_threads_that_parsed_starts_and_answers():
    parsed, done = threading.Event(), threading.Event()
    # The main thread parses too: pytest's main thread, like `fabtier run`'s, lives on.
    assert parse("SELECT 2") is not None
    holders = [threading.Thread(target=_parse_and_wait, args=(parsed, done)) for _ in range(3)]
    for thread in holders:
        thread.start()
    try:
        assert parsed.wait(30)
        answers = []
        forker = threading.Thread(target=lambda: answers.extend(
            call_in_fork(lambda: parse("SELECT 3") is not None, timeout=60) for _ in range(5)))
        forker.start()
        forker.join(120)
        assert answers == [True] * 5
    finally:
        done.set()
        for thread in holders:
            thread.join()
