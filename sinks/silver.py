"""Silver: validated, deduplicated, standardized and enriched events as Parquet.

Path: processed/{topic}/date=YYYY-MM-DD/ by event time. One typed schema per topic.
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from sinks.lake import Lake, utc_day
from sinks.partitioned import OffsetTrackedSink
from streams import topics
from streams.events import CleanEvent, event_time_ms

_TS = pa.timestamp("ms", tz="UTC")
_PROVENANCE = [("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())]

SCHEMAS: dict[str, pa.Schema] = {
    topics.VITALS: pa.schema([
        ("event_id", pa.string()), ("patient_id", pa.string()), ("timestamp", _TS), ("source", pa.string()),
        ("heart_rate", pa.float64()), ("bp_systolic", pa.float64()), ("bp_diastolic", pa.float64()),
        ("resp_rate", pa.float64()), ("spo2", pa.float64()), ("temperature", pa.float64()),
        ("consciousness", pa.string()), ("on_oxygen", pa.bool_()), ("pulse_pressure", pa.float64()),
        ("mean_arterial_pressure", pa.float64()), ("shock_index", pa.float64()), ("flags", pa.list_(pa.string())),
        *_PROVENANCE]),
    topics.LABS: pa.schema([
        ("event_id", pa.string()), ("patient_id", pa.string()), ("timestamp", _TS), ("test", pa.string()),
        ("value", pa.float64()), ("unit", pa.string()), ("flags", pa.list_(pa.string())), *_PROVENANCE]),
    topics.MEDICATIONS: pa.schema([
        ("event_id", pa.string()), ("patient_id", pa.string()), ("timestamp", _TS), ("drug", pa.string()),
        ("dose", pa.float64()), ("unit", pa.string()), ("route", pa.string()), *_PROVENANCE]),
    topics.ADVERSE_EVENTS: pa.schema([
        ("event_id", pa.string()), ("patient_id", pa.string()), ("onset_time", _TS), ("reported_time", _TS),
        ("type", pa.string()), ("severity", pa.int8()), ("serious", pa.bool_()), *_PROVENANCE]),
    topics.PATIENTS: pa.schema([
        ("patient_id", pa.string()), ("event", pa.string()), ("timestamp", _TS), ("age", pa.float64()),
        ("sex", pa.string()), ("weight_kg", pa.float64()), ("height_cm", pa.float64()), ("trial_arm", pa.string()),
        ("site", pa.string()), ("comorbidities", pa.list_(pa.string())), *_PROVENANCE]),
}
# Parquet column -> CleanEvent attribute, where they differ.
_ATTRIBUTES = {"timestamp": "ts_ms", "onset_time": "onset_ms", "reported_time": "reported_ms"}

# A buffered row: (kafka_partition, kafka_offset, event).
SilverRow = tuple[int, int, CleanEvent]


def parquet_bytes(rows: list[SilverRow], schema: pa.Schema) -> bytes:
    """One Parquet object of clean events, built by column (in the lake writer's thread, not per record)."""
    events = [e for _, _, e in rows]
    columns = {}
    for name in schema.names:
        if name == "kafka_partition":
            columns[name] = [p for p, _, _ in rows]
        elif name == "kafka_offset":
            columns[name] = [o for _, o, _ in rows]
        else:
            attribute = _ATTRIBUTES.get(name, name)
            columns[name] = [getattr(e, attribute) for e in events]
    table = pa.Table.from_pydict(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class SilverSink:
    """One offset-tracked Parquet sink per clinical topic."""

    def __init__(self, lake: Lake) -> None:
        self.sinks = {
            topic: OffsetTrackedSink(lake, f"silver-{topic}", f"processed/{topic}", "parquet",
                                     lambda rows, s=schema: parquet_bytes(rows, s))
            for topic, schema in SCHEMAS.items()
        }

    def add_event(self, topic: str, partition: int, offset: int, event: CleanEvent) -> None:
        # The events are immutable once validated: buffered as they are, turned into columns when written.
        day = utc_day(event_time_ms(event))
        self.sinks[topic].add(topic, partition, offset, f"date={day}", (partition, offset, event))

    def accepts(self, topic: str, partition: int, offset: int) -> bool:
        return self.sinks[topic].accepts(topic, partition, offset)

    def advance(self, topic: str, partition: int, offset: int) -> None:
        self.sinks[topic].advance(topic, partition, offset)

    @property
    def buffered_rows(self) -> int:
        return sum(s.buffered_rows for s in self.sinks.values())

    def seal_batches(self) -> list:
        return [sink.seal() for sink in self.sinks.values()]

    def recover(self, tps) -> None:  # noqa: ANN001
        for topic, sink in self.sinks.items():
            sink.recover([tp for tp in tps if tp[0] == topic])

    def forget(self, tps) -> None:
        for sink in self.sinks.values():
            sink.forget(tps)
