"""Which lot run a machine was processing at a given time: the lot context of CONTRACT.md 2.

A run starts with a `start` event and ends at the machine's next event (its `end`, or the
next `start`), exactly as the `lot_runs` view defines it. The recipe version of a run is
the one resolved when its start was received, and travels with the event.
Pure and not thread-safe (the pipeline's lock guards it); keeps the last `keep` events per
machine, which covers far more than the readings still judged live.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ingest.codec import ContextEvent

_NO_END = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class Run:
    machine: str
    start_ms: int
    end_ms: int | None
    lot: str
    wafer: str
    recipe: str
    recipe_version: str | None


class _Machine:
    __slots__ = ("events", "runs", "starts", "ends")

    def __init__(self) -> None:
        self.events: list[tuple[int, int, ContextEvent]] = []
        self.runs: list[Run] = []
        self.starts = np.empty(0, np.int64)
        self.ends = np.empty(0, np.int64)

    def rebuild(self) -> None:
        runs = []
        for i, (_, _, e) in enumerate(self.events):
            if e.event != "start":
                continue
            end = self.events[i + 1][0] if i + 1 < len(self.events) else None
            runs.append(Run(e.machine, e.ts, end, e.lot, e.wafer, e.recipe, e.recipe_version))
        self.runs = runs
        self.starts = np.array([r.start_ms for r in runs], dtype=np.int64)
        self.ends = np.array([_NO_END if r.end_ms is None else r.end_ms for r in runs], dtype=np.int64)


class LotContext:
    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._machines: dict[str, _Machine] = {}

    def add(self, event: ContextEvent) -> None:
        machine = self._machines.setdefault(event.machine, _Machine())
        # At the same ts a start sorts before an end, as in the lot_runs view.
        bisect.insort(machine.events, (event.ts, 0 if event.event == "start" else 1, event),
                      key=lambda item: item[:2])
        if len(machine.events) > self.keep:
            del machine.events[: len(machine.events) - self.keep]
        machine.rebuild()

    def run_at(self, machine: str, ts: int) -> Run | None:
        found = self.covering(machine, ts, ts)
        return found[1] if found is not None else None

    def covering(self, machine: str, first_ts: int, last_ts: int) -> tuple[int, Run] | None:
        """The run that covers all of [first_ts, last_ts], if one does."""
        found = self._machines.get(machine)
        if found is None or not found.runs:
            return None
        i = bisect.bisect_right(found.starts, first_ts) - 1
        if i < 0 or last_ts >= found.ends[i]:
            return None
        return i, found.runs[i]

    def runs_for(self, machine: str, ts: np.ndarray) -> tuple[np.ndarray, list[Run]]:
        """Per reading the index of its run in the returned list, -1 where none ran."""
        found = self._machines.get(machine)
        if found is None or not found.runs:
            return np.full(len(ts), -1, np.int64), []
        index = np.searchsorted(found.starts, ts, side="right") - 1
        safe = np.maximum(index, 0)
        index = np.where((index >= 0) & (ts < found.ends[safe]), index, -1)
        return index, found.runs

    def latest(self, machine: str) -> Run | None:
        found = self._machines.get(machine)
        return found.runs[-1] if found and found.runs else None
