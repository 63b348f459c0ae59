"""Replay Kafka history through the live pipeline: backfills of the offline store and Redis.

`vitalstream replay --from T0 --to T1` reads the clinical topics from Kafka and drives
the same `agents.pipeline.Pipeline` (validation, dedup, features) as the live worker,
in the same cross-topic order (`agents.ordering.merge_order`), in-process: no round
trip through Kafka per event. Rows are emitted for whole UTC days covering [T0, T1).

Exactness. Each patient's state is warmed up from `T0 - (RECALL_MS + allowed
lateness)`: every feature looks back at most RECALL_MS (7 days; the rolling windows
24 h), so the first replayed rows equal the live ones bit for bit. clinical.patients
(enrolments, demographics) is read from its beginning.

Idempotence. A replay writes one Parquet object per (day, Kafka partition number),
named by a hash of its plan, then commits each day with a manifest
(`features/offline/date=D/_replay.json`) that supersedes the live objects it
recomputed; `sinks.offline.read_offline` switches to the new rows at that single
atomic PUT. The same replay run twice writes identical objects.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import orjson

from agents.ordering import MERGE_RANK, merge_order
from agents.pipeline import Pipeline, RawRecord
from sinks import offline as offline_store
from sinks.lake import Lake, utc_day
from streams.timestamps import DAY_MS
from sinks.online import MemoryOnlineStore, OnlineStore
from sinks.partitioned import parse_tp_key, tp_key
from streams import topics
from tables.features.registry import FEATURE_VERSION, RECALL_MS
from tables.state import DictStateStore
from vitalstream.settings import Settings

log = logging.getLogger(__name__)

FEATURE_TOPICS: tuple[str, ...] = tuple(MERGE_RANK)  # patients, labs, medications, vitals
TARGETS = ("offline", "online", "both")
STALL_S = 120.0  # a reader without progress this long fails the replay instead of hanging


class ReplayError(RuntimeError):
    """A replay that cannot run as asked (bad range, unreachable Kafka, a failed reader)."""


def parse_time(text: str) -> int:
    """ISO date or datetime (UTC unless an offset is given), or 'now' -> epoch ms."""
    if text == "now":
        return int(time.time() * 1000)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(f"not an ISO date or datetime: {text!r} (e.g. 2026-01-05 or 2026-01-05T06:00Z)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)




@dataclass(frozen=True)
class ReplayPlan:
    """What a replay reads and emits. Offsets are per logical (topic, partition): [first, stop)."""

    rows_from_ms: int  # whole UTC days: rows with rows_from_ms <= t < rows_to_ms are emitted
    rows_to_ms: int
    warmup_from_ms: int
    ranges: dict[tuple[str, int], tuple[int, int]]
    allowed_lateness_ms: int
    patients: tuple[str, ...] | None = None

    @property
    def partitions(self) -> list[int]:
        return sorted({p for _, p in self.ranges})

    @property
    def days(self) -> list[str]:
        return [utc_day(t) for t in range(self.rows_from_ms, self.rows_to_ms, DAY_MS)]

    @property
    def total_records(self) -> int:
        return sum(stop - first for first, stop in self.ranges.values())

    @property
    def plan_id(self) -> str:
        """Same plan, same id, same object names: what makes a repeated replay rewrite identical files."""
        spec = {
            "rows": [self.rows_from_ms, self.rows_to_ms], "warmup": self.warmup_from_ms,
            "ranges": sorted([t, p, a, b] for (t, p), (a, b) in self.ranges.items()),
            "lateness": self.allowed_lateness_ms, "feature_version": FEATURE_VERSION,
            "patients": list(self.patients or ()),
        }
        return hashlib.sha256(orjson.dumps(spec)).hexdigest()[:12]

    def last_offsets(self) -> dict[str, int]:
        """'topic-pNNN' -> last offset the replay covered (what its rows supersede)."""
        return {tp_key(t, p): stop - 1 for (t, p), (first, stop) in sorted(self.ranges.items())}


def _consumer(settings: Settings):
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                            group_id=None, auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                            fetch_max_bytes=32 << 20, request_timeout_ms=30_000)


async def _plan_ranges(settings: Settings, warmup_from_ms: int, stop_at_ms: int | None,
                       logical_topics: Iterable[str], from_beginning: Iterable[str] = ()) -> dict:
    from aiokafka import TopicPartition

    consumer = _consumer(settings)
    try:
        await consumer.start()
    except Exception as exc:
        raise ReplayError(f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); is the stack up? "
                          "(`vitalstream stack up`)") from exc
    try:
        tps = []
        for logical in logical_topics:
            name = topics.kafka_name(settings, logical)
            parts = consumer.partitions_for_topic(name)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(name)
            if not parts:
                raise ReplayError(f"topic {name} does not exist (create topics with `vitalstream topics`)")
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: max(warmup_from_ms, 0) for tp in tps})
        stops = await consumer.offsets_for_times({tp: stop_at_ms for tp in tps}) if stop_at_ms else {}
        ranges = {}
        beginning = set(from_beginning)
        for tp in tps:
            logical = topics.logical_name(settings, tp.topic)
            first = begin[tp] if logical in beginning else (starts[tp].offset if starts.get(tp) else end[tp])
            if begin[tp] > 0 and first == begin[tp] and first < end[tp]:
                # Records were deleted (retention) and the oldest one left is already inside the range: the
                # history it needs is gone, and replaying would replace true rows with partial ones.
                raise ReplayError(f"{tp.topic}[{tp.partition}] no longer holds the history from "
                                  f"{utc_day(max(warmup_from_ms, 0))} (its log starts at offset {begin[tp]}); "
                                  "replay a later range")
            stop = stops[tp].offset if stops.get(tp) else end[tp]
            ranges[(logical, tp.partition)] = (first, max(first, stop))
        return ranges
    finally:
        await consumer.stop()


def plan_replay(settings: Settings, from_ms: int, to_ms: int, *, patients: Iterable[str] | None = None,
                arrival_slack_ms: int = DAY_MS) -> ReplayPlan:
    """Offsets to read for rows in the whole UTC days covering [from_ms, to_ms).

    Records arriving more than `arrival_slack_ms` after the range are not read (a report that
    late is outside the allowed lateness of any patient who is still being observed).
    """
    if to_ms <= from_ms:
        raise ReplayError(f"--to must be after --from ({utc_day(from_ms)} .. {utc_day(to_ms)})")
    rows_from = from_ms // DAY_MS * DAY_MS
    rows_to = -(-to_ms // DAY_MS) * DAY_MS
    warmup = rows_from - RECALL_MS - settings.allowed_lateness_ms
    stop_at = rows_to + arrival_slack_ms
    if stop_at > time.time() * 1000:
        stop_at = None  # up to the end of the log
    ranges = asyncio.run(_plan_ranges(settings, warmup, stop_at, FEATURE_TOPICS, (topics.PATIENTS,)))
    # A day committed before by a replay that read further (a wider range) must not lose the rows that
    # replay covered: read at least as far as every existing manifest of these days.
    lake = Lake.from_settings(settings)
    for day in (utc_day(t) for t in range(rows_from, rows_to, DAY_MS)):
        manifest = offline_store.read_manifest(lake, day)
        for key, last in (manifest or {}).get("last_offsets", {}).items():
            tp = parse_tp_key(key)
            if tp in ranges and ranges[tp][1] <= last:
                ranges[tp] = (ranges[tp][0], last + 1)
    return ReplayPlan(rows_from, rows_to, warmup, ranges, settings.allowed_lateness_ms,
                      tuple(sorted(set(patients))) if patients else None)


# --- reading ------------------------------------------------------------------------------
class _Reader(threading.Thread):
    """Streams one topic-partition's [first, stop) as RawRecords through a bounded queue."""

    _DONE = object()

    def __init__(self, settings: Settings, logical: str, partition: int, first: int, stop: int,
                 max_batches: int = 8) -> None:
        super().__init__(daemon=True, name=f"replay-{logical}-{partition}")
        self.settings, self.logical, self.partition, self.first, self.stop = settings, logical, partition, first, stop
        self.queue: queue.Queue = queue.Queue(max_batches)

    def run(self) -> None:
        try:
            asyncio.run(self._read())
            self.queue.put(self._DONE)
        except BaseException as exc:  # handed to the consumer of the queue, which raises it
            self.queue.put(exc)

    async def _read(self) -> None:
        from aiokafka import TopicPartition

        if self.first >= self.stop:
            return
        tp = TopicPartition(topics.kafka_name(self.settings, self.logical), self.partition)
        consumer = _consumer(self.settings)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, self.first)
            position = self.first
            progressed = time.monotonic()
            while position < self.stop:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                batch = [RawRecord(self.logical, self.partition, m.offset, m.timestamp, m.key, m.value)
                         for m in got.get(tp, ()) if m.offset < self.stop]
                if batch:
                    self.queue.put(batch)
                new_position = await consumer.position(tp)  # past compaction gaps and transaction markers
                if new_position > position:
                    position, progressed = new_position, time.monotonic()
                elif time.monotonic() - progressed > STALL_S:
                    raise ReplayError(f"no progress reading {tp.topic}[{tp.partition}] at offset {position} "
                                      f"for {STALL_S:.0f} s (is Kafka up? `vitalstream stack status`)")
        finally:
            await consumer.stop()

    def __iter__(self) -> Iterator[RawRecord]:
        self.start()
        while True:
            item = self.queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise ReplayError(f"reading {self.logical}[{self.partition}] failed: {item!r}") from item
            yield from item


def read_topic(settings: Settings, logical: str) -> Iterator[RawRecord]:
    """Every record of a topic from its beginning to its current end, partition by partition."""
    async def ranges() -> dict:
        return await _plan_ranges(settings, 0, None, [logical], [logical])

    for (t, p), (first, stop) in sorted(asyncio.run(ranges()).items()):
        yield from _Reader(settings, t, p, first, stop)


# --- processing ---------------------------------------------------------------------------
class ReplayRows:
    """The offline sink of a replay: keeps the rows of the plan's days, in processing order."""

    def __init__(self, plan: ReplayPlan, keep_rows: bool = True) -> None:
        self.lo, self.hi = plan.rows_from_ms, plan.rows_to_ms
        self.keep_rows = keep_rows  # rows are held until the end (~1.5 KB each): not for --target online
        self.rows: dict[str, list[tuple]] = {}
        self.latest = MemoryOnlineStore()  # each patient's newest vector, by the online store's own rule
        self.buffered_rows = 0

    # The interface Pipeline uses (sinks.offline.OfflineFeatureSink's).
    def accepts(self, topic: str, partition: int, offset: int) -> bool:
        return True

    def advance(self, topic: str, partition: int, offset: int) -> None:
        pass

    def add_row(self, topic: str, partition: int, offset: int, patient_id: str, ts_ms: int, event_id: str,
                values: np.ndarray) -> None:
        if not self.lo <= ts_ms < self.hi:
            return
        if self.keep_rows:
            self.rows.setdefault(utc_day(ts_ms), []).append(
                (patient_id, ts_ms, event_id, topic, partition, offset, values))
        self.latest.add(patient_id, ts_ms, event_id, values)


@dataclass
class PartitionResult:
    partition: int
    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # day -> rows written
    objects: dict[str, str] = field(default_factory=dict)  # day -> object path
    rejected: Counter = field(default_factory=Counter)
    online_written: int = 0
    seconds: float = 0.0


def replay_partition(settings: Settings, plan: ReplayPlan, partition: int, target: str,
                     on_progress: Callable[[int], None] | None = None) -> PartitionResult:
    """Replay one partition number of every feature topic (the same patients) and write its rows."""
    t0 = time.perf_counter()
    lake = Lake.from_settings(settings)
    collector = ReplayRows(plan, keep_rows=target in ("offline", "both"))
    # serialize=False: state stays in this process, and the engine never mutates a stored value in place
    # (the parity test compares the rows with the live worker's, whose table serializes).
    pipeline = Pipeline(lake=lake, store=DictStateStore(serialize=False), online=None,
                        allowed_lateness_ms=plan.allowed_lateness_ms, bronze=False, silver=False,
                        offline=collector)  # type: ignore[arg-type]
    wanted = {p.encode() for p in plan.patients} if plan.patients else None
    readers = [_Reader(settings, t, p, first, stop) for (t, p), (first, stop) in sorted(
        plan.ranges.items(), key=lambda kv: MERGE_RANK[kv[0][0]]) if p == partition]
    result = PartitionResult(partition)
    pending = 0
    for rec in merge_order(readers):
        result.records += 1
        pending += 1
        if pending == 2000:
            if on_progress:
                on_progress(pending)
            pending = 0
        if wanted is not None and rec.key not in wanted:
            continue
        dead = pipeline.process(rec)
        if dead is not None:
            result.rejected[dead.reason] += 1
    if on_progress and pending:
        on_progress(pending)
    pipeline.publish_counts()
    if target in ("offline", "both"):
        for day in plan.days:
            rows = collector.rows.get(day, [])
            path = f"{offline_store.PREFIX}/date={day}/{offline_store.replay_object_name(plan.plan_id, partition)}"
            lake.put(path, offline_store.encode_rows(rows))
            result.rows[day], result.objects[day] = len(rows), path
    collector.latest.flush()
    if target in ("online", "both") and collector.latest.vectors:
        online = OnlineStore.from_url(settings.redis_url)
        fresh_from = time.time() * 1000 - online.ttl_seconds * 1000
        for pid, (ts, eid, values) in collector.latest.vectors.items():
            if ts >= fresh_from:  # an older vector would have expired live: do not bring it back
                online.add(pid, ts, eid, values)
        result.online_written = online.flush()  # never overwrites a newer (live) vector
    result.seconds = time.perf_counter() - t0
    return result


def _worker_main(settings: Settings, plan: ReplayPlan, partitions: list[int], target: str,
                 progress: Any, results: Any) -> None:
    def bump(n: int) -> None:
        with progress.get_lock():
            progress.value += n

    try:
        for p in partitions:
            results.put(replay_partition(settings, plan, p, target, bump))
    except BaseException as exc:  # reported to the parent, which fails the replay
        results.put(ReplayError(f"partition worker {partitions} failed: {exc!r}"))


@dataclass
class ReplayReport:
    plan: ReplayPlan
    results: list[PartitionResult]
    seconds: float
    committed_days: list[str]
    superseded_objects: int

    @property
    def records(self) -> int:
        return sum(r.records for r in self.results)

    @property
    def rows(self) -> int:
        return sum(sum(r.rows.values()) for r in self.results)

    @property
    def rejected(self) -> Counter:
        return sum((r.rejected for r in self.results), Counter())

    @property
    def online_written(self) -> int:
        return sum(r.online_written for r in self.results)

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def run_replay(settings: Settings, plan: ReplayPlan, *, target: str = "offline", workers: int = 1,
               progress: bool = True) -> ReplayReport:
    """Replay the plan (in `workers` processes, split by partition number), then commit its days."""
    if target not in TARGETS:
        raise ReplayError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if plan.patients and target != "online":
        raise ReplayError("--patients replays only some patients, but an offline rewrite replaces whole date "
                          "partitions (it would drop the other patients' rows): use --target online, or "
                          "replay every patient")
    t0 = time.perf_counter()
    partitions = plan.partitions
    workers = max(1, min(workers, len(partitions)))
    results: list[PartitionResult] = []
    if workers == 1:
        with _progress_bar(progress, plan.total_records) as advance:
            for p in partitions:
                results.append(replay_partition(settings, plan, p, target, advance))
    else:
        # forkserver with this module preloaded: children are forked from a clean single-threaded server (the
        # parent may run lake or S3 threads), with everything already imported (spawn costs seconds per child).
        # Settings go over pickled as the object: a JSON dump would mask its secrets.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["agents.replay"])
        counter, queue_ = ctx.Value("q", 0), ctx.Queue()
        shares = [partitions[i::workers] for i in range(workers)]
        procs = [ctx.Process(target=_worker_main, args=(settings, plan, share, target,
                                                         counter, queue_), daemon=True) for share in shares]
        for proc in procs:
            proc.start()
        seen = 0
        try:
            with _progress_bar(progress, plan.total_records) as advance:
                while len(results) < len(partitions):
                    try:
                        item = queue_.get(timeout=0.25)
                    except queue.Empty:
                        if all(not p.is_alive() for p in procs) and queue_.empty():
                            raise ReplayError("a replay worker died without a result (see its output above)")
                        item = None
                    if isinstance(item, BaseException):
                        raise item
                    if item is not None:
                        results.append(item)
                    advance(counter.value - seen)
                    seen = counter.value
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join()
    committed, superseded = [], 0
    if target in ("offline", "both"):
        lake = Lake.from_settings(settings)
        for day in plan.days:
            objects = sorted(r.objects[day] for r in results if day in r.objects)
            try:
                superseded += offline_store.commit_replay(lake, day, plan.plan_id, objects, plan.last_offsets())
            except offline_store.ReplayConflict as exc:
                raise ReplayError(str(exc)) from exc
            committed.append(day)
    return ReplayReport(plan, sorted(results, key=lambda r: r.partition), time.perf_counter() - t0,
                        committed, superseded)


class _progress_bar:
    """A rich progress bar with records/s and ETA; a no-op when quiet."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        class Rate(TextColumn):
            def render(self, task):  # records/s
                return f"{task.speed or 0:,.0f} rec/s"

        self.bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                            Rate(""), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            transient=False)
        self.bar.start()
        task = self.bar.add_task("replay", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()

