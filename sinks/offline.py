"""Offline feature store: every feature row as Parquet under features/offline/date=YYYY-MM-DD/.

Rows: patient_id, timestamp (the vector's event time t), event_id (the triggering
event), its Kafka provenance, feature_version, then every registry feature in order.
Readable by date range with pyarrow.dataset, pandas and duckdb (hive partitioning).
"""
from __future__ import annotations

import io
import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sinks.lake import Lake, partition_date, utc_day
from sinks.partitioned import OBJECT_NAME, OffsetTrackedSink, tp_key
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
        self.add(topic, partition, offset, f"date={utc_day(ts_ms)}",
                 (patient_id, ts_ms, event_id, topic, partition, offset, values))


def replay_object_name(plan_id: str, partition: int) -> str:
    return f"replay-{plan_id}-p{partition:03d}.parquet"


MANIFEST = "_replay.json"
_REPLAY_NAME = re.compile(r"/replay-(?P<plan>[0-9a-f]+)-p\d+\.parquet$")


class ReplayConflict(RuntimeError):
    """Another replay committed the same day concurrently."""


def read_manifest(lake: Lake, day: str) -> dict | None:
    try:
        return orjson.loads(lake.get(f"{PREFIX}/date={day}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def commit_replay(lake: Lake, day: str, plan_id: str, objects: list[str], last_offsets: dict[str, int]) -> int:
    """Make a replay's objects the content of date=day (one atomic PUT), then delete what they superseded.

    last_offsets ('topic-pNNN' -> offset): live rows at or below them were recomputed by the replay.
    Deletes the live objects superseded and the previous manifest's objects, never another replay's
    uncommitted ones. Returns the number of objects deleted.
    """
    directory = f"{PREFIX}/date={day}"
    previous = read_manifest(lake, day)
    manifest = {"plan_id": plan_id, "objects": sorted(objects), "last_offsets": last_offsets,
                "feature_version": FEATURE_VERSION}
    lake.put(f"{directory}/{MANIFEST}", orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    present = {obj.path for obj in lake.list(directory)}
    if not set(objects) <= present:  # a concurrent replay's commit deleted ours
        raise ReplayConflict(f"objects of replay {plan_id} for {day} disappeared while committing: another "
                             "replay of this day ran at the same time; run one replay per day at a time and "
                             "repeat this one")
    old = set(previous["objects"]) - set(objects) if previous else set()
    deleted = 0
    for path in sorted(present):
        replayed = _REPLAY_NAME.search(path) is not None
        if (path in old) or (not replayed and _use(path, manifest) is None):
            lake.delete(path)
            deleted += 1
    return deleted


def _use(path: str, manifest: dict | None) -> str | None:
    """How a reader uses a live object (not a replay's) of a date partition under its manifest:
    "all", "tail" (only rows past the manifest's offsets), None (superseded), or "keep" (not rows)."""
    name = path.rsplit("/", 1)[-1]
    if not name.endswith(".parquet"):
        return "keep"  # the manifest itself
    if manifest is None:
        return "all"
    m = OBJECT_NAME.search(name)
    if m is None:
        return "all"
    last = manifest["last_offsets"].get(tp_key(m["topic"], int(m["partition"])))
    if last is None or int(m["first"]) > last:
        return "all"
    return "tail" if int(m["last"]) > last else None


def read_offline(lake: Lake, start: str | None = None, end: str | None = None,
                 columns: list[str] | None = None) -> pa.Table:
    """The offline store as a pyarrow Table, optionally for dates start..end (inclusive, YYYY-MM-DD)
    and only some columns.

    Honors replay manifests: a replayed day reads the replay's rows plus live rows written past it.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    by_day: dict[str, list[str]] = {}
    for obj in lake.list(PREFIX):
        day = partition_date(obj.path)
        if day is not None and (start is None or str(day) >= start) and (end is None or str(day) <= end):
            by_day.setdefault(str(day), []).append(obj.path)
    whole, tails = [], []
    for day, paths in sorted(by_day.items()):
        manifest = read_manifest(lake, day) if f"{PREFIX}/date={day}/{MANIFEST}" in paths else None
        if manifest is not None:
            whole.extend(manifest["objects"])  # as committed, even if listed before the commit
        for path in paths:
            if _REPLAY_NAME.search(path):
                continue  # a replay object counts only through its manifest
            use = _use(path, manifest)
            if use == "all":
                whole.append(path)
            elif use == "tail":
                tails.append((path, manifest))
    schema = pa.schema([*SCHEMA, ("date", pa.string())])
    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")

    def dataset(paths: list[str]):
        return ds.dataset([lake.full(p) for p in paths], filesystem=lake.fs, format="parquet", schema=schema,
                          partitioning=partitioning, partition_base_dir=lake.full(PREFIX))

    tables = [dataset(whole).to_table(columns=columns)]
    for path, manifest in tails:  # a live object straddling a replay's end: keep the rows past it
        table = dataset([path]).to_table()
        last = np.array([manifest["last_offsets"].get(tp_key(t, p), -1) for t, p in zip(
            table["source_topic"].to_pylist(), table["source_partition"].to_pylist())], dtype=np.int64)
        table = table.filter(pc.greater(table["source_offset"], pa.array(last)))
        tables.append(table.select(columns) if columns else table)
    return pa.concat_tables(tables)
