"""`fabtier tiers`: rows, bytes, oldest and newest reading per tier, and what storing it costs
a month. The counting reads only metadata (object sizes, Parquet footers and row-group
statistics), never the data itself. The cost is a pure function of bytes and storage class.

Prices: USD per GiB-month, AWS us-east-1 list prices as known to the author in 2025 (not
checked against AWS's price list from this machine, which has no internet): S3 Standard
0.023, S3 Standard-IA 0.0125 (One Zone-IA 0.01, Glacier Instant Retrieval 0.004,
Intelligent-Tiering's frequent tier 0.023, for objects someone moved there by hand), S3 Glacier
Flexible Retrieval 0.0036, S3 Glacier Deep Archive 0.00099, EBS gp3 0.08 (the data directory's disk: log, warm store, a local lake), and
memory at 4.89 (an r7g.large, 16 GiB for 0.1071 USD an hour, times 730 hours). Request,
retrieval and transfer charges are not included.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import pyarrow.dataset as ds

PRICES_AS_OF = "2025 (us-east-1 list prices; see tiers/inventory.py)"
USD_PER_GIB_MONTH = {
    "memory": 4.89,
    "local-disk": 0.08,
    "STANDARD": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "INTELLIGENT_TIERING": 0.023,  # its frequent-access tier
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}
_HOT_BYTES_PER_READING = 16


@dataclass(frozen=True)
class TierRow:
    tier: str
    storage_class: str
    rows: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None
    usd_per_month: float

    def as_dict(self) -> dict:
        return asdict(self)


def monthly_cost(size: int, storage_class: str) -> float:
    return size / 2**30 * USD_PER_GIB_MONTH[storage_class]


def row(tier: str, storage_class: str, rows: int, size: int, oldest: int | None, newest: int | None) -> TierRow:
    return TierRow(tier, storage_class, int(rows), int(size), oldest, newest, monthly_cost(size, storage_class))


def _ms(value) -> int | None:
    if value is None:
        return None
    return int(value.timestamp() * 1000)


def parquet_tier(tier: str, storage_class: str, store, prefix: str, column: str,
                 listed: list[tuple[str, int]] | None = None) -> TierRow:
    """Rows and time range of a lake prefix (or of the `listed` (key, size) objects) from
    Parquet footers and row-group statistics."""
    if listed is None:
        listed = [(k, size) for k, size in store.list(prefix) if k.endswith(".parquet")]
    if not listed:
        return row(tier, storage_class, 0, 0, None, None)
    filesystem, root = store.arrow_filesystem()
    dataset = ds.dataset([f"{root}/{k}" for k, _ in listed], filesystem=filesystem, format="parquet")
    rows, oldest, newest = 0, None, None
    for fragment in dataset.get_fragments():
        fragment.ensure_complete_metadata()
        for group in fragment.row_groups:
            rows += group.num_rows
            stats = group.statistics.get(column) if group.statistics else None
            if stats:
                low, high = _ms(stats.get("min")), _ms(stats.get("max"))
                oldest = low if oldest is None or (low is not None and low < oldest) else oldest
                newest = high if newest is None or (high is not None and high > newest) else newest
    return row(tier, storage_class, rows, sum(size for _, size in listed), oldest, newest)


def lake_class(store_url: str) -> str:
    """A local lake is priced as disk; an S3 lake as S3 Standard (archive classes come with
    the frozen tier, which adds its own rows)."""
    return "local-disk" if store_url.startswith("file:") else "STANDARD"


def report(rows: list[TierRow]) -> dict:
    return {"tiers": [r.as_dict() for r in rows],
            "total_usd_per_month": sum(r.usd_per_month for r in rows),
            "usd_per_gib_month": USD_PER_GIB_MONTH, "prices_as_of": PRICES_AS_OF}


def hot_ring_row(ring) -> TierRow:
    oldest, newest = ring.span() or (None, None)
    return row("hot ring", "memory", len(ring), len(ring) * _HOT_BYTES_PER_READING, oldest, newest)


def unsealed_row(readings, wal_bytes: int) -> TierRow:
    """Readings durable in the write-ahead log but not sealed into the lake yet."""
    if readings.num_rows == 0:
        return row("unsealed (log)", "local-disk", 0, wal_bytes, None, None)
    ts = readings.column("ts").cast("int64")
    import pyarrow.compute as pc
    return row("unsealed (log)", "local-disk", readings.num_rows, wal_bytes,
               pc.min(ts).as_py(), pc.max(ts).as_py())


def warm_row(stats) -> TierRow:
    return row("warm (readings_1m)", "local-disk", stats.rows, stats.bytes, stats.oldest_ms, stats.newest_ms)


def raw_rows(store, store_url: str) -> list[TierRow]:
    """The lake's raw readings: what a reader sees now (cold), and per archive class what
    the lifecycle moved (frozen). Files a compacted set replaced are not counted twice.
    Archived objects on S3 cannot be opened, so their rows are 0 (unknown) and their time
    range is that of their hour partitions; a local store's recorded classes can be read."""
    from tiers import layout
    from tiers.cold import ColdLake
    from tiers.parquetformat import hour_bounds_ms

    lake = ColdLake(store, writer_id="")
    files = lake.lake_files("raw")
    readable = layout.visible(files, writer="", hidden_segments=set())
    rows = [parquet_tier("cold raw", lake_class(store_url), store, "raw/", "ts",
                         [(f.key, f.size) for f in readable if not f.archived])]
    local = store_url.startswith("file:")
    # An archived object with a restored copy is read by SQL: counted once, as restored, at
    # its class's price (the copy's Standard storage while it lasts is not included).
    for cls in sorted({f.storage_class for f in readable if f.archived}):
        restored = [(f.key, f.size) for f in readable if f.archived and f.storage_class == cls]
        rows.append(parquet_tier(f"restored raw ({cls})", "local-disk" if local else cls, store, "raw/", "ts",
                                 restored))
    for cls in sorted({f.storage_class for f in files if f.archived and not f.restored}):
        frozen = [f for f in files if f.archived and not f.restored and f.storage_class == cls]
        name = f"frozen raw ({cls}{', recorded locally' if local else ''})"
        price = "local-disk" if local else cls
        if local:
            rows.append(parquet_tier(name, price, store, "raw/", "ts", [(f.key, f.size) for f in frozen]))
        else:
            bounds = [hour_bounds_ms(f.day, f.hour) for f in frozen if f.hour is not None]
            rows.append(row(name, price, 0, sum(f.size for f in frozen),
                            min((b[0] for b in bounds), default=None), max((b[1] - 1 for b in bounds), default=None)))
    return rows


# The lake's other kinds of data (lifecycle.policy keeps them readable) and the column that
# gives each its time range.
OTHER_KINDS = (("agg_1m", "minute"), ("context", "ts"), ("alerts", "ts"), ("quarantine", "received_at"))
_DAY = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


def kind_rows(store, store_url: str, kind: str, column: str) -> list[TierRow]:
    """One kind of data per storage class: `cold {kind}` (STANDARD, always shown), `cold
    {kind} (CLASS)` for another readable class (STANDARD_IA), `frozen {kind} (CLASS)` for an
    archived one, so that a user sees where every kind of history went. Archived objects on
    S3 cannot be opened: rows 0 (unknown), time range that of their day partitions."""
    from core.records import ARCHIVED, STANDARD
    from tiers.parquetformat import hour_bounds_ms

    local = store_url.startswith("file:")
    objects = [o for o in store.objects(f"{kind}/") if o.key.endswith(".parquet")]
    by_class: dict[str, list] = {STANDARD: []}
    for o in objects:
        by_class.setdefault(o.storage_class, []).append(o)
    rows = []
    for cls, members in sorted(by_class.items(), key=lambda item: (item[0] != STANDARD, item[0])):
        archived = cls in ARCHIVED
        if cls == STANDARD:
            name = f"cold {kind}"
        else:
            name = f"{'frozen' if archived else 'cold'} {kind} ({cls}{', recorded locally' if local else ''})"
        price = lake_class(store_url) if cls == STANDARD or local else cls
        if archived and not local:
            days = sorted({m.group(1) for o in members if (m := _DAY.search("/" + o.key))})
            rows.append(row(name, price, 0, sum(o.size for o in members),
                            hour_bounds_ms(days[0], "00")[0] if days else None,
                            hour_bounds_ms(days[-1], "23")[1] - 1 if days else None))
        else:
            rows.append(parquet_tier(name, price, store, f"{kind}/", column, [(o.key, o.size) for o in members]))
    return rows


def stored_rows(store, store_url: str, warm_stats) -> list[TierRow]:
    """Warm store and lake: the tiers that exist with or without a running pipeline."""
    rows = [warm_row(warm_stats), *raw_rows(store, store_url)]
    for kind, column in OTHER_KINDS:
        rows += kind_rows(store, store_url, kind, column)
    return rows
