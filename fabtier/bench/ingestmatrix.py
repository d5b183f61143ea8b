"""`fabtier bench ingest --scales ... --queries-per-s ... --rounds N`: several fleet sizes and
query rates compared in one run.

On a shared 2-core machine two runs of the same configuration a minute apart can differ by
20 % or more, which hides the differences asked of fab scale (100,000 sensors at >= 0.85 of
4,000; queries costing <= 5 %). So every cell (scale x queries a second) runs once a round,
the rounds alternate their order (A B B A ...: a slow drift of the machine weighs on every
cell alike), and a comparison is the median of the ratios *within* a round, between runs
made minutes apart, beside the ratio of the medians. Each run is `ingest.run` unchanged: its
own broker, its own `mosquitto_sub` baseline, its own instance.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from core.errors import UserError
from fabtier.bench.ingest import IngestBench, cpu_cores_text
from fabtier.bench.ingest import run as run_once


@dataclass(frozen=True)
class Scale:
    machines: int
    sensors: int
    rate_hz: float

    @property
    def label(self) -> str:
        return f"{self.machines}x{self.sensors}x{self.rate_hz:g}"

    @property
    def distinct_sensors(self) -> int:
        return self.machines * self.sensors


def parse_scales(text: str) -> list[Scale]:
    """`40x100x250,1000x100x10`: machines x sensors per machine x Hz, comma-separated."""
    scales = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            machines, sensors, rate = int(parts[0]), int(parts[1]), float(parts[2])
            if len(parts) != 3 or machines < 1 or sensors < 1 or not 0 < rate <= 10_000:
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"--scales: {item.strip()!r} is not MACHINESxSENSORSxHZ (e.g. 40x100x250), "
                            f"with machines and sensors >= 1 and 0 < Hz <= 10000") from None
        scales.append(Scale(machines, sensors, rate))
    return scales


def parse_rates(text: str) -> list[float]:
    """`0,5`: SQL statements a second, each >= 0."""
    try:
        rates = [float(item) for item in text.split(",")]
    except ValueError:
        raise UserError(f"--queries-per-s: {text!r} is not a number or a comma-separated list of numbers") from None
    if any(rate < 0 for rate in rates):
        raise UserError("--queries-per-s must be 0 (no queries) or more")
    return rates


Cell = tuple[Scale, float]


def plan(scales: list[Scale], rates: list[float], rounds: int) -> list[list[Cell]]:
    """The cells of each round in the order they run: forward, then backward, and so on."""
    cells = [(scale, rate) for scale in scales for rate in rates]
    return [cells if n % 2 == 0 else cells[::-1] for n in range(rounds)]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _paired(runs: dict[Cell, list[dict]], cell: Cell, reference: Cell, key: str) -> list[float]:
    """Ratio of `cell` to `reference` in each round (both ran in it, minutes apart)."""
    return [_ratio(a[key], b[key]) for a, b in zip(runs[cell], runs[reference], strict=True)]


def statement_cpu_ms(run: dict, quiet: dict) -> float | None:
    """What one SQL statement cost the instance, in ms of its CPU: the CPU it used beyond the
    run of the same stream without queries (same round), over the statements answered. None
    without statements."""
    if not run.get("sql_queries"):
        return None
    return round((run["fabtier_cpu_seconds"] - quiet["fabtier_cpu_seconds"]) / run["sql_queries"] * 1000, 1)


def _median_cores(done: list[dict]) -> dict[str, float]:
    names = [name for name in done[0].get("cpu_cores", {}) if all(name in r.get("cpu_cores", {}) for r in done)]
    return {name: round(statistics.median(r["cpu_cores"][name] for r in done), 2) for name in names}


def summarize(scales: list[Scale], rates: list[float], runs: dict[Cell, list[dict]]) -> dict:
    """Medians per cell, and each cell against the first scale at the same rate and against
    the same scale without queries (or the lowest rate asked)."""
    cells = []
    for scale in scales:
        for rate in rates:
            done = runs[(scale, rate)]
            row = {"scale": scale.label, "distinct_sensors": scale.distinct_sensors, "queries_per_s": rate,
                   "runs": len(done)}
            for key in ("fabtier_readings_per_s", "steady_readings_per_s", "baseline_readings_per_s",
                        "ratio_to_baseline", "sql_ms_p50", "sql_ms_p99", "fabtier_cpu_us_per_reading"):
                values = [r[key] for r in done if key in r]
                if values:
                    row[key] = round(statistics.median(values), 3)
            row["each_readings_per_s"] = [r["fabtier_readings_per_s"] for r in done]
            row["each_backpressure_commits"] = [r["backpressure_commits"] for r in done]
            if done and "cpu_cores" in done[0]:
                row["cpu_cores"] = _median_cores(done)
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in done)
            row["lost"] = sum(r["lost"] for r in done)
            row["duplicates"] = sum(r["duplicates"] for r in done)
            first, quiet = (scales[0], rate), (scale, rates[0])
            if rates[0] == 0 and rate > 0:
                per_statement = [statement_cpu_ms(r, q) for r, q in zip(done, runs[quiet], strict=True)]
                paired = [ms for ms in per_statement if ms is not None]
                if paired:
                    row["statement_cpu_ms_paired"] = paired
                    row["statement_cpu_ms"] = round(statistics.median(paired), 1)
            for name, reference in (("vs_first_scale", first), ("vs_fewest_queries", quiet)):
                if reference == (scale, rate):
                    continue
                for key, label in (("fabtier_readings_per_s", "whole"), ("steady_readings_per_s", "steady")):
                    if all(key in r for r in done + runs[reference]):
                        paired = _paired(runs, (scale, rate), reference, key)
                        row[f"{name}_{label}_paired"] = paired
                        row[f"{name}_{label}"] = round(statistics.median(paired), 3)
            cells.append(row)
    return {"bench": "ingest-matrix", "cells": cells}


def run(base: IngestBench, scales: list[Scale], rates: list[float], rounds: int, *, progress=print) -> dict:
    runs: dict[Cell, list[dict]] = {(scale, rate): [] for scale in scales for rate in rates}
    for number, order in enumerate(plan(scales, rates, rounds), start=1):
        for scale, rate in order:
            bench = replace(base, machines=scale.machines, sensors=scale.sensors, rate_hz=scale.rate_hz,
                            queries_per_s=rate)
            result = run_once(bench)
            runs[(scale, rate)].append(result)
            progress(f"round {number}: {scale.label} Q={rate:g}: {result['fabtier_readings_per_s']:,} readings/s "
                     f"(baseline {result.get('baseline_readings_per_s', 0):,}; lost {result['lost']}, "
                     f"duplicates {result['duplicates']})")
    out = summarize(scales, rates, runs)
    out.update(seconds_of_data=base.seconds, batch=base.batch, rounds=rounds)
    return out


def report(result: dict) -> str:
    lines = [f"fabtier bench ingest, {result['rounds']} round(s) of every cell, alternating order "
             f"({result['seconds_of_data']:g} s of data a run, batches of {result['batch']}); medians:",
             f"  {'scale':<16} {'sensors':>9} {'Q/s':>4} {'readings/s':>11} {'2nd half':>11} {'baseline':>11} "
             f"{'ratio':>6} {'SQL p50/p99 ms':>15} {'peak RSS':>9}  vs first scale | vs Q=0 (paired, whole/2nd half)"]
    for c in result["cells"]:
        sql = f"{c['sql_ms_p50']:.0f} / {c['sql_ms_p99']:.0f}" if "sql_ms_p50" in c else "-"
        versus = []
        for name in ("vs_first_scale", "vs_fewest_queries"):
            if f"{name}_whole" in c:
                versus.append(f"{c[f'{name}_whole']:.2f}/{c.get(f'{name}_steady', 0):.2f}")
            else:
                versus.append("-")
        lines.append(f"  {c['scale']:<16} {c['distinct_sensors']:>9,} {c['queries_per_s']:>4g} "
                     f"{c['fabtier_readings_per_s']:>11,.0f} {c.get('steady_readings_per_s', 0):>11,.0f} "
                     f"{c.get('baseline_readings_per_s', 0):>11,.0f} {c.get('ratio_to_baseline', 0):>6.2f} "
                     f"{sql:>15} {c['peak_rss_mib']:>7,} MiB  {versus[0]:>14} | {versus[1]}"
                     f"  (lost {c['lost']}, duplicates {c['duplicates']})")
    lines.append("  while fabtier took the stream (medians, in cores of the machine's "
                 f"{next((c['cpu_cores']['cores'] for c in result['cells'] if 'cpu_cores' in c), 0):g}), "
                 "and what one statement cost the instance (its CPU beyond the run without queries, "
                 "paired in each round, over the statements answered):")
    for c in result["cells"]:
        if "cpu_cores" not in c:
            continue
        cost = (f"; a statement: {c['statement_cpu_ms']:.0f} ms of CPU "
                f"({', '.join(f'{ms:.0f}' for ms in c['statement_cpu_ms_paired'])})"
                if "statement_cpu_ms" in c else "")
        held = ", ".join(str(n) for n in c["each_backpressure_commits"])
        lines.append(f"  {c['scale']:<16} Q={c['queries_per_s']:<4g} {cpu_cores_text(c['cpu_cores'])}{cost}; "
                     f"commits held back for a seal: {held}")
    return "\n".join(lines)
