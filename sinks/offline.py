"""Offline feature store: every feature row as Parquet under features/offline/date=YYYY-MM-DD/.

Rows: patient_id, timestamp (the vector's event time t), event_id (the triggering
event), its Kafka provenance, feature_version, then every registry feature in order.
Readable by date range with pyarrow.dataset, pandas and duckdb (hive partitioning).
"""
from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sinks.lake import Lake
from sinks.partitioned import OffsetTrackedSink
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION

PREFIX = "features/offline"
KEY_COLUMNS = [
    ("patient_id", pa.string()),
    ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("event_id", pa.string()),
    ("source_topic", pa.string()),
    ("source_partition", pa.int32()),
    ("source_offset", pa.int64()),
    ("feature_version", pa.string()),
]
SCHEMA = pa.schema([*KEY_COLUMNS, *[(name, pa.float64()) for name in FEATURE_NAMES]])


def encode_rows(rows: list[tuple]) -> bytes:
    """rows: (patient_id, ts_ms, event_id, topic, partition, offset, values) -> Parquet bytes."""
    values = np.vstack([r[6] for r in rows]) if rows else np.empty((0, len(FEATURE_NAMES)))
    columns = [
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([r[1] for r in rows], pa.timestamp("ms", tz="UTC")),
        pa.array([r[2] for r in rows], pa.string()),
        pa.array([r[3] for r in rows], pa.string()),
        pa.array([r[4] for r in rows], pa.int32()),
        pa.array([r[5] for r in rows], pa.int64()),
        pa.array([FEATURE_VERSION] * len(rows), pa.string()),
        *[pa.array(values[:, i], pa.float64()) for i in range(values.shape[1])],
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(columns, schema=SCHEMA), buf, compression="zstd")
    return buf.getvalue()


class OfflineFeatureSink(OffsetTrackedSink):
    def __init__(self, lake: Lake) -> None:
        super().__init__(lake, "offline-features", PREFIX, "parquet", encode_rows)

    def add_row(self, topic: str, partition: int, offset: int, patient_id: str, ts_ms: int, event_id: str,
                values: np.ndarray) -> None:
        day = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
        self.add(topic, partition, offset, f"date={day:%Y-%m-%d}",
                 (patient_id, ts_ms, event_id, topic, partition, offset, values))


def read_offline(lake: Lake, start: str | None = None, end: str | None = None):
    """The offline store as a pyarrow Table, optionally for dates start..end (inclusive, YYYY-MM-DD)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(lake.full(PREFIX), filesystem=lake.fs, format="parquet", partitioning="hive",
                         schema=pa.schema([*SCHEMA, ("date", pa.string())]), exclude_invalid_files=True,
                         ignore_prefixes=[".tmp-", "_"])
    flt = None
    if start:
        flt = ds.field("date") >= start
    if end:
        flt = (ds.field("date") <= end) if flt is None else flt & (ds.field("date") <= end)
    return dataset.to_table(filter=flt)
