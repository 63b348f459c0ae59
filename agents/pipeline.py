"""One raw record in, everything downstream out: bronze, silver, features, online and offline stores.

Plain Python with no Faust in it: the live Faust agent (agents/clinical.py) and the
Kafka replay drive this same class, so live and replayed features cannot diverge.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from agents import metrics
from sinks.bronze import BronzeSink
from sinks.lake import Lake
from sinks.offline import OfflineFeatureSink
from sinks.online import OnlineStore, Pending
from sinks.partitioned import SealedBatch, write_batches
from sinks.silver import SilverSink
from streams.events import CleanAdverseEvent
from streams.validation import Accepted, Rejection, deadletter_record, validate_record
from tables.state import FeatureEngine, FeatureUpdate, StateStore


@dataclass(slots=True, frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # Kafka record time (arrival)
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    reason: str


@dataclass(slots=True)
class OnlineBatch:
    vectors: Pending  # the newest vector per patient
    arrivals: dict[str, list[int]]  # per patient, Kafka timestamps of the records behind it (latency histogram)

    def landed(self, patients: list[str]) -> None:
        """Feature-update latency of the records behind these patients' vectors, which Redis now holds: from each
        record's Kafka timestamp to now."""
        stamps = [ts for patient_id in patients for ts in self.arrivals.get(patient_id, ())]
        if stamps:
            ages_ms = time.time() * 1000 - np.asarray(stamps, dtype=np.float64)
            metrics.observe_many(metrics.UPDATE_LATENCY, np.maximum(ages_ms, 0.0) / 1000)


@dataclass
class FlushReport:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Validate, deduplicate, standardize, enrich, featurize and sink clinical records."""

    def __init__(self, *, lake: Lake, store: StateStore, online: OnlineStore | None,
                 allowed_lateness_ms: int = 3_600_000, bronze: bool = True, silver: bool = True,
                 offline: bool | OfflineFeatureSink = True) -> None:
        """offline: True for the lake's offline store, or a sink of the same interface (replay's)."""
        self.engine = FeatureEngine(store, allowed_lateness_ms=allowed_lateness_ms)
        self.bronze = BronzeSink(lake) if bronze else None
        self.silver = SilverSink(lake) if silver else None
        self.offline = OfflineFeatureSink(lake) if offline is True else (offline or None)
        self.online = online
        # Records per topic and feature updates not yet added to the metrics (`publish_counts`): a
        # prometheus increment takes a lock, twice per record otherwise.
        self._events_in: dict[str, int] = {}
        self._feature_updates = 0
        self._arrivals: dict[str, list[int]] = {}  # Kafka timestamps of records whose vector awaits Redis

    def process(self, rec: RawRecord) -> DeadLetter | None:
        """Handle one record; returns the dead letter to produce, if it was rejected."""
        t, p, o = rec.topic, rec.partition, rec.offset
        self._events_in[t] = self._events_in.get(t, 0) + 1
        if self.bronze is not None:
            if self.bronze.accepts(t, p, o):
                self.bronze.add_record(t, p, o, rec.timestamp_ms, rec.key, rec.value)
            else:
                metrics.REDELIVERED.labels("bronze").inc()
        result = validate_record(t, rec.key, rec.value, rec.timestamp_ms)
        dead = None
        if isinstance(result, Rejection):
            dead = self._reject(rec, result)
        else:
            dead = self._accept(rec, result)
        for sink in (self.silver, self.offline):
            if sink is not None:
                sink.advance(t, p, o)
        return dead

    def _reject(self, rec: RawRecord, rejection: Rejection) -> DeadLetter:
        metrics.REJECTED.labels(rejection.reason).inc()
        if rejection.reason == "late_event":
            metrics.LATE_EVENTS.inc()
        value = deadletter_record(rejection, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                                  key=rec.key, value=rec.value, record_ts_ms=rec.timestamp_ms)
        return DeadLetter(rec.key, value, rejection.reason)

    def _accept(self, rec: RawRecord, accepted: Accepted) -> DeadLetter | None:
        event = accepted.event
        if accepted.extra_fields:
            metrics.UNKNOWN_FIELDS.labels(rec.topic).inc(accepted.extra_fields)
        if getattr(event, "flags", ()):
            metrics.IMPLAUSIBLE.inc(len(event.flags))
        update = None
        if not isinstance(event, CleanAdverseEvent):  # adverse events are labels, not features
            outcome = self.engine.process(event)
            if outcome is not None and not isinstance(outcome, FeatureUpdate):  # an engine rejection
                if outcome.reason == "duplicate":
                    metrics.DUPLICATES.labels(rec.topic).inc()
                    return None
                return self._reject(rec, Rejection(outcome.reason, outcome.detail))
            update = outcome
        if self.silver is not None and self.silver.accepts(rec.topic, rec.partition, rec.offset):
            self.silver.add_event(rec.topic, rec.partition, rec.offset, event)
        if update is not None:
            self._feature_updates += 1
            if self.offline is not None:
                if self.offline.accepts(rec.topic, rec.partition, rec.offset):
                    self.offline.add_row(rec.topic, rec.partition, rec.offset, update.patient_id, update.ts_ms,
                                         update.event_id, update.values)
                else:
                    metrics.REDELIVERED.labels("offline").inc()
            if self.online is not None:
                self.online.add(update.patient_id, update.ts_ms, update.event_id, update.values)
                arrivals = self._arrivals.get(update.patient_id)
                if arrivals is None:
                    self._arrivals[update.patient_id] = [rec.timestamp_ms]
                else:
                    arrivals.append(rec.timestamp_ms)
        return None

    def publish_counts(self) -> None:
        """Add the records and feature updates counted since the last call to the metrics (per batch)."""
        for topic, n in self._events_in.items():
            metrics.EVENTS_IN.labels(topic).inc(n)
        self._events_in.clear()
        if self._feature_updates:
            metrics.FEATURE_UPDATES.inc(self._feature_updates)
            self._feature_updates = 0

    # --- flushing ------------------------------------------------------------------------
    @property
    def lake_rows_buffered(self) -> int:
        return sum(s.buffered_rows for s in (self.bronze, self.silver, self.offline) if s is not None)

    def take_online(self) -> OnlineBatch | None:
        """Take the coalesced latest vectors out, to `write_online` (cheap: run it every micro-batch)."""
        if self.online is None or not self.online.buffered:
            return None
        batch = OnlineBatch(self.online.take(), self._arrivals)
        self._arrivals = {}
        return batch

    def write_online(self, batch: OnlineBatch | None) -> int:
        """Write taken vectors to Redis. Safe off the event loop (Redis time is then not the loop's)."""
        if batch is None or self.online is None:
            return 0
        t0 = time.perf_counter()
        self.online.write(batch.vectors, batch.landed)
        return self._online_written(batch, t0)

    async def write_online_async(self, batch: OnlineBatch | None) -> int:
        """`write_online` from the event loop, without blocking it (the store needs an async client)."""
        if batch is None or self.online is None:
            return 0
        t0 = time.perf_counter()
        await self.online.write_async(batch.vectors, batch.landed)
        return self._online_written(batch, t0)

    @staticmethod
    def _online_written(batch: OnlineBatch, t0: float) -> int:
        n = len(batch.vectors)
        metrics.FLUSH_ROWS.labels("redis").observe(n)
        metrics.FLUSH_SECONDS.labels("redis").observe(time.perf_counter() - t0)
        metrics.EVENTS_OUT.labels("redis").inc(n)
        return n

    def flush_online(self) -> int:
        """Write the coalesced latest vectors to Redis now."""
        return self.write_online(self.take_online())

    def seal_lake(self) -> list[tuple[str, list[SealedBatch]]]:
        """Take the buffered bronze, silver and offline rows out, to write with `write_lake`."""
        sealed = []
        for name, sink in (("bronze", self.bronze), ("silver", self.silver), ("offline", self.offline)):
            if sink is not None:
                sealed.append((name, sink.seal_batches()))
        return sealed

    @staticmethod
    def write_lake(sealed: list[tuple[str, list[SealedBatch]]]) -> FlushReport:
        """Write sealed rows as objects (in parallel), then their watermarks. Safe off the event loop."""
        report = FlushReport()
        stats = write_batches([b for _, batches in sealed for b in batches])
        i = 0
        for name, batches in sealed:
            rows = sum(st.rows for st in stats[i:i + len(batches)])
            seconds = stats[i].seconds if batches else 0.0
            i += len(batches)
            report.rows[name], report.seconds[name] = rows, seconds
            if rows:
                metrics.FLUSH_ROWS.labels(name).observe(rows)
                metrics.FLUSH_SECONDS.labels(name).observe(seconds)
                metrics.EVENTS_OUT.labels(name).inc(rows)
        return report

    def flush_lake(self) -> FlushReport:
        """Write buffered bronze, silver and offline rows as objects, then their watermarks."""
        return self.write_lake(self.seal_lake())

    def recover(self, tps: set[tuple[str, int]]) -> None:
        """Load the lake sinks' watermarks of (topic, partition)s about to be processed (lists the lake: run
        it off the event loop); otherwise each partition's first record does it."""
        for sink in (self.bronze, self.silver, self.offline):
            if sink is not None:
                sink.recover(tps)

    def forget(self, tps: set[tuple[str, int]]) -> None:
        for sink in (self.bronze, self.silver, self.offline):
            if sink is not None:
                sink.forget(tps)
