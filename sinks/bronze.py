"""Bronze: every record of the clinical.* topics exactly as received, as NDJSON.

Each line is an envelope holding the untouched value bytes (UTF-8 text, or base64
when they are not UTF-8) with topic, partition, offset, Kafka timestamp and key.
Path: raw/{topic}/date=YYYY-MM-DD/hour=HH/ by Kafka record time.
"""
from __future__ import annotations

import base64

import orjson

from sinks.lake import Lake, utc_day
from sinks.partitioned import OffsetTrackedSink


def envelope(topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
             value: bytes | None) -> dict:
    raw = value or b""
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    return {"topic": topic, "partition": partition, "offset": offset, "timestamp_ms": timestamp_ms,
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "value": text, "value_encoding": encoding}


def original_value(line: dict) -> bytes:
    """The exact value bytes an envelope holds."""
    if line["value_encoding"] == "base64":
        return base64.b64decode(line["value"])
    return line["value"].encode("utf-8")


def _ndjson(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


class BronzeSink(OffsetTrackedSink):
    def __init__(self, lake: Lake) -> None:
        super().__init__(lake, "bronze", "raw", "ndjson", _ndjson)

    def add_record(self, topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
                   value: bytes | None) -> None:
        directory = f"{topic}/date={utc_day(timestamp_ms)}/hour={timestamp_ms // 3_600_000 % 24:02d}"
        self.add(topic, partition, offset, directory, envelope(topic, partition, offset, timestamp_ms, key, value))
