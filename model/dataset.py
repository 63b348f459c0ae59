"""Training datasets: offline feature rows joined with point-in-time labels, split 70/15/15.

`build_dataset` reads the offline store for a date range (the replay's or the live
worker's rows, through `sinks.offline.read_offline`), labels every row from a replay
of clinical.adverse_events and clinical.patients (`model.labels`), drops excluded
rows and writes `datasets/{data_version}/{train,val,test}/part-{day}.parquet` to the
lake, plus `manifest.json`. The data_version is a content hash of what went in: the
feature version, the (day, topic, partition) offset ranges and row counts of the
feature rows, the label sources' offsets and the split options. Building the same
version again reuses it. Memory is bounded by one day of rows.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.labels import OutcomeCollector, Outcomes, label_rows
from sinks.lake import Lake
from sinks.offline import read_offline
from sinks.partitioned import tp_key
from streams import topics
from streams.validation import validate_record
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION
from vitalstream.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "datasets"
SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
KEY_COLUMNS = ["patient_id", "timestamp", "event_id"]
_PROVENANCE = ["timestamp", "patient_id", "source_topic", "source_partition", "source_offset", "feature_version"]
HORIZON_MS = 24 * 3_600_000  # the label horizon: also the gap left before each time-split cut point


class DatasetError(ValueError):
    """A dataset that cannot be built as asked (no rows, no positives, ...)."""


@dataclass
class DatasetInfo:
    data_version: str
    root: str  # lake path of the dataset
    start: str
    end: str
    split: str
    rows: dict[str, int]
    positives: dict[str, int]
    excluded: dict[str, int]  # reason -> rows dropped
    cut_points_ms: list[int]  # time split: train < c0 <= val < c1 <= test
    patients_in_several_splits: int
    patients: dict[str, int]
    several_splits_sample: list[str] = field(default_factory=list)  # up to 20 such patient ids
    files: dict[str, list[str]] = field(default_factory=dict)
    reused: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def collect_label_outcomes(settings: Settings, min_grade: int = 1) -> tuple[Outcomes, dict[str, int]]:
    """Replay clinical.adverse_events and clinical.patients through validation; returns outcomes and offsets."""
    from agents.replay import read_topic

    collector = OutcomeCollector(min_grade=min_grade)
    ends: dict[str, int] = {}
    for logical in (topics.PATIENTS, topics.ADVERSE_EVENTS):
        for rec in read_topic(settings, logical):
            collector.add(validate_record(rec.topic, rec.key, rec.value, rec.timestamp_ms))
            key = tp_key(rec.topic, rec.partition)
            ends[key] = max(ends.get(key, -1), rec.offset)
    return collector.outcomes(data_end_ms=collector.max_seen_ms or 0), ends


def _days(start: str, end: str) -> list[str]:
    d0, d1 = date.fromisoformat(start), date.fromisoformat(end)
    return [(d0 + timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def _patient_bucket(patient_ids: np.ndarray) -> np.ndarray:
    """Deterministic 0-99 bucket per patient (for patient-disjoint splits)."""
    return np.array([int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "big") % 100 for p in patient_ids])


def _assign(split: str, ts: np.ndarray, pids: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Split index per row (0 train, 1 val, 2 test), or -1 for a row left out of a time split's gap."""
    if split == "time":
        assigned = np.searchsorted(np.asarray(cuts), ts, side="right").astype(np.int8)
        # A row's label looks 24 h ahead: rows within 24 h before a cut point would label with the next
        # split's events (leakage into early stopping, calibration and the test metrics), so they are left out.
        for k, cut in enumerate(cuts):
            assigned[(assigned == k) & (ts > cut - HORIZON_MS)] = -1
        return assigned
    bucket = _patient_bucket(pids)
    lo, hi = int(FRACTIONS[0] * 100), int((FRACTIONS[0] + FRACTIONS[1]) * 100)
    return np.where(bucket < lo, 0, np.where(bucket < hi, 1, 2)).astype(np.int8)


def build_dataset(settings: Settings, *, start: str | None = None, end: str | None = None, split: str = "time",
                  min_grade: int = 1, lake: Lake | None = None, outcomes: Outcomes | None = None,
                  label_offsets: dict[str, int] | None = None,
                  log_fn: Callable[[str], None] = log.info) -> DatasetInfo:
    """Build (or reuse) the dataset for offline rows dated start..end (default: the last 90 days)."""
    if split not in ("time", "patient"):
        raise DatasetError(f"split must be 'time' or 'patient', got {split!r}")
    today = datetime.now(timezone.utc).date()
    end = end or today.isoformat()
    start = start or (date.fromisoformat(end) - timedelta(days=settings.datasets_days - 1)).isoformat()
    lake = lake or Lake.from_settings(settings)

    # Pass 1: keys and provenance only (cheap), for the labels, the cut points and the data version.
    keys = read_offline(lake, start, end, columns=_PROVENANCE)
    if keys.num_rows == 0:
        raise DatasetError(f"no offline feature rows dated {start}..{end}: run the live worker or "
                           f"`vitalstream replay --from {start}` first")
    if outcomes is None:
        outcomes, label_offsets = collect_label_outcomes(settings, min_grade)
    versions = keys["feature_version"].to_numpy(zero_copy_only=False)
    current = versions == FEATURE_VERSION
    if not current.any():
        raise DatasetError(f"no offline rows of feature version {FEATURE_VERSION} dated {start}..{end} (found "
                           f"{sorted(set(versions))}): replay the range with this code (`vitalstream replay "
                           f"--from {start}`)")
    if not current.all():  # rows of other definitions never mix into one dataset
        stale_days = sorted(set(pc.strftime(keys.filter(pa.array(~current))["timestamp"], format="%Y-%m-%d")
                                .to_pylist()))
        log_fn(f"leaving out {int((~current).sum()):,} rows of other feature versions (days {stale_days[0]}.."
               f"{stale_days[-1]}; replay them to include them)")
    ts_all = keys["timestamp"].cast(pa.int64()).to_numpy()
    # The end of observation is the end of the replayed data: the latest record seen (feature rows, patient and
    # adverse-event records), not the range's end, so rows near --to keep their full horizon when data exists.
    data_end = int(ts_all.max())
    outcomes.data_end_ms = max(outcomes.data_end_ms or 0, data_end)
    pids_all = np.asarray(keys["patient_id"].to_pylist(), dtype=object)
    labels = label_rows(pids_all, ts_all, outcomes)
    included = labels.included & current
    if split == "time":
        cuts = [int(x) for x in np.quantile(ts_all[included], [FRACTIONS[0], FRACTIONS[0] + FRACTIONS[1]],
                                             method="lower")] if included.any() else [0, 0]
    else:
        cuts = []

    summary = (
        pa.table({"d": pc.strftime(keys["timestamp"], format="%Y-%m-%d"), "t": keys["source_topic"],
                  "p": keys["source_partition"], "o": keys["source_offset"]})
        .group_by(["d", "t", "p"]).aggregate([("o", "min"), ("o", "max"), ("o", "count")])
        .sort_by([("d", "ascending"), ("t", "ascending"), ("p", "ascending")]).to_pylist()
    )
    version_spec = {"feature_version": FEATURE_VERSION, "gap_ms": HORIZON_MS, "rows": summary, "labels": sorted((label_offsets or {}).items()),
                    "split": split, "min_grade": min_grade, "start": start, "end": end, "data_end": data_end}
    data_version = hashlib.sha256(orjson.dumps(version_spec)).hexdigest()[:16]
    root = f"{PREFIX}/{data_version}"
    try:
        info = DatasetInfo(**orjson.loads(lake.get(f"{root}/manifest.json")))
        info.reused = True
        log_fn(f"dataset {data_version} already built: reusing it")
        return info
    except FileNotFoundError:
        pass

    assignment = _assign(split, ts_all, pids_all, cuts)
    reason = np.where(current, labels.reason, "other_feature_version").astype(object)
    reason[included & (assignment < 0)] = "split_gap"
    included = included & (assignment >= 0)
    reasons, counts = np.unique(reason[~included], return_counts=True)
    # Row i of `keys` is identified by its provenance; pass 2 reads whole days and looks its label up.
    lookup = {(t, p, o): i for i, (t, p, o) in enumerate(zip(keys["source_topic"].to_pylist(),
                                                              keys["source_partition"].to_pylist(),
                                                              keys["source_offset"].to_pylist()))}
    rows = dict.fromkeys(SPLITS, 0)
    positives = dict.fromkeys(SPLITS, 0)
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    patients: dict[str, set] = {s: set() for s in SPLITS}
    for day in _days(start, end):
        table = read_offline(lake, day, day)
        if table.num_rows == 0:
            continue
        # Rows written since pass 1 (a live worker is running) are not in the snapshot the version hashes.
        idx = np.array([lookup.get(k, -1) for k in zip(table["source_topic"].to_pylist(),
                                                       table["source_partition"].to_pylist(),
                                                       table["source_offset"].to_pylist())], dtype=np.int64)
        known = idx >= 0
        keep = known & included[np.where(known, idx, 0)]
        for s, name in enumerate(SPLITS):
            mask = keep & (assignment[np.where(known, idx, 0)] == s)
            if not mask.any():
                continue
            sel = idx[mask]
            part = table.filter(pa.array(mask)).select([*KEY_COLUMNS, *FEATURE_NAMES])
            part = part.append_column("label", pa.array(labels.label[sel], pa.int8()))
            part = part.append_column("onset_ms", pa.array(labels.onset_ms[sel], pa.int64()))
            path = f"{root}/{name}/part-{day}.parquet"
            buf = io.BytesIO()
            pq.write_table(part, buf, compression="zstd", row_group_size=16_384)
            lake.put(path, buf.getvalue())
            files[name].append(path)
            rows[name] += part.num_rows
            positives[name] += int(labels.label[sel].sum())
            patients[name].update(part["patient_id"].to_pylist())
        log_fn(f"dataset {data_version}: {day} done ({sum(rows.values()):,} rows)")
    shared = sorted((patients["train"] & patients["val"]) | (patients["train"] & patients["test"])
                    | (patients["val"] & patients["test"]))
    info = DatasetInfo(data_version, root, start, end, split, rows, positives,
                       {str(r): int(c) for r, c in zip(reasons, counts)}, cuts, len(shared),
                       {s: len(patients[s]) for s in SPLITS}, shared[:20], files)
    lake.put(f"{root}/manifest.json", info.to_json())  # written last: a manifest means a complete dataset
    return info
