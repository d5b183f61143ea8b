"""Micro-batch assembly: a list of MQTT messages into decoded batches, single readings,
context events and quarantine records, plus the tokens to acknowledge. Pure: no I/O, the
caller passes the clock's reading."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.codec import (
    ContextEvent,
    Limits,
    PayloadError,
    ReadingBatch,
    SingleReading,
    decode_context,
    decode_message,
)
from ingest.walformat import QuarantineRecord

QUARANTINE_PAYLOAD_LIMIT = 64 * 1024


def payload_text(payload: bytes) -> str:
    """The payload as quarantine keeps it: text, at most 64 KiB."""
    text = payload[:QUARANTINE_PAYLOAD_LIMIT].decode("utf-8", errors="replace")
    if len(payload) > QUARANTINE_PAYLOAD_LIMIT:
        text += f"... [{len(payload) - QUARANTINE_PAYLOAD_LIMIT} more bytes not kept]"
    return text


@dataclass
class Assembled:
    batches: list[ReadingBatch] = field(default_factory=list)
    singles: list[SingleReading] = field(default_factory=list)
    context: list[ContextEvent] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # message ids to acknowledge (QoS 1)


def assemble(messages: list[tuple[str, bytes, int, int]], *, readings_root: str, context_prefix: str,
             now_ms: int, limits: Limits) -> Assembled:
    """Sort each (topic, payload, qos, mid) into what it carries; a bad one into quarantine."""
    out = Assembled()
    context_root = context_prefix[:-1]
    for topic, payload, qos, mid in messages:
        if qos:
            out.tokens.append(mid)
        try:
            # `{ctx_root}` itself is matched by `{ctx_root}/#` too: a context message without a
            # machine, to be refused as such, not read as readings under the readings root.
            if topic.startswith(context_prefix) or topic == context_root:
                out.context.append(decode_context(topic, payload, root=context_root, now_ms=now_ms, limits=limits))
                continue
            decoded = decode_message(topic, payload, root=readings_root, now_ms=now_ms, limits=limits)
        except PayloadError as exc:
            out.quarantine.append(QuarantineRecord(received_at=now_ms, topic=topic, reason=exc.reason,
                                                   payload=payload_text(payload)))
            continue
        except Exception as exc:
            # A bug in the codec must cost this message only: raised from here it would end
            # the ingest thread (its caller decodes outside its own guard) and hold up every
            # good message after it.
            out.quarantine.append(QuarantineRecord(
                received_at=now_ms, topic=topic, reason=f"internal error: {type(exc).__name__}: {exc}",
                payload=payload_text(payload)))
            continue
        if isinstance(decoded, SingleReading):
            out.singles.append(decoded)
        else:
            out.batches.append(decoded)
    return out
