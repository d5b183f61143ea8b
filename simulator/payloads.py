"""MQTT messages of the simulator (CONTRACT.md sections 1 and 2). Pure: blocks in, bytes out.

- `batch >= 2`: a machine's readings in columnar batches of at most `batch` readings on
  `{root}/{machine}`: `{"ts": [...], "sensor": [...], "v": [...]}`.
- `batch == 1`: one message per reading on `{root}/{machine}/{sensor}`: `{"ts": .., "v": ..}`.
- context events on `{ctx_root}/{machine}`:
  `{"ts": .., "event": .., "lot": .., "wafer": .., "recipe": ..}`.

Values are already rounded by the model (`np.rint(v * 10**d) / 10**d` is the double nearest
the decimal), and orjson writes the shortest text that reads back as the same double, so
23.51 goes on the wire as `23.51`.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from .model import ContextEvent, ReadingBlock

Message = tuple[str, bytes]


def reading_messages(blocks: Iterable[ReadingBlock], *, batch: int,
                     topic_root: str = "fab") -> list[Message]:
    if batch < 1:
        raise ValueError("batch must be >= 1")
    dumps = orjson.dumps
    out: list[Message] = []
    for block in blocks:
        ts = block.ts.tolist()
        values = block.value.tolist()
        if batch == 1:
            prefix = f"{topic_root}/{block.machine}/"
            names = block.names.tolist()
            out.extend((prefix + names[s], dumps({"ts": t, "v": v}))
                       for s, t, v in zip(block.sensor_index.tolist(), ts, values, strict=True))
            continue
        topic = f"{topic_root}/{block.machine}"
        sensors = block.sensor.tolist()
        for i in range(0, len(ts), batch):
            j = i + batch
            out.append((topic, dumps({"ts": ts[i:j], "sensor": sensors[i:j], "v": values[i:j]})))
    return out


def context_messages(events: Iterable[ContextEvent], *, ctx_root: str = "fab-ctx") -> list[Message]:
    return [(f"{ctx_root}/{e.machine}",
             orjson.dumps({"ts": e.ts, "event": e.event, "lot": e.lot, "wafer": e.wafer,
                           "recipe": e.recipe}))
            for e in events]


def messages(blocks: Iterable[ReadingBlock], events: Iterable[ContextEvent], *, batch: int,
             topic_root: str = "fab", ctx_root: str = "fab-ctx") -> list[Message]:
    """Context first: a lot's start is announced before readings of the same tick."""
    return (context_messages(events, ctx_root=ctx_root)
            + reading_messages(blocks, batch=batch, topic_root=topic_root))


def readings_in(topic: str, payload: bytes, *, topic_root: str = "fab") -> int:
    """How many readings a simulator message carries (0 for anything else)."""
    if not topic.startswith(topic_root + "/"):
        return 0
    if "/" in topic[len(topic_root) + 1:]:
        return 1
    return len(orjson.loads(payload)["ts"])
