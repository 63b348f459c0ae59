"""The live stream agent: clinical.* records through the shared Pipeline, in micro-batches.

Delivery is at-least-once. Records are taken without auto-ack; Redis is written
every micro-batch; the lake sinks flush by row count or seconds; then the feature
state is written to its table, the producer is flushed (changelog and dead
letters durable) and only then are the records acked, so the committed offset
never passes data the sinks do not hold.
"""
from __future__ import annotations

import asyncio
import logging
import time

import redis
from prometheus_client import start_http_server

from agents import metrics
from agents.pipeline import Pipeline, RawRecord
from app import app, settings
from sinks.lake import Lake
from sinks.online import OnlineStore
from streams import topics
from tables.faust_tables import FaustTableStore

log = logging.getLogger(__name__)

clinical_topic = app.topic(*topics.CLINICAL_TOPICS, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
deadletter_topic = app.topic(topics.DEADLETTER, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw")

# Small RocksDB buffers: one DB per partition, and the defaults (64 MiB x3, 2 GiB cache) are sized for big servers.
feature_state = app.Table(
    "feature_state", default=None, partitions=settings.topic_partitions,
    options={"write_buffer_size": 8 << 20, "max_write_buffer_number": 2, "block_cache_size": 64 << 20},
)

class _LiveState:
    """What the agent holds between micro-batches; shared with the idle-flush timer."""

    def __init__(self) -> None:
        self.store = FaustTableStore(feature_state)
        self.pipeline = build_pipeline(self.store)
        self.unacked: list = []
        self.stream = None
        self.last_flush = time.monotonic()
        self.lock = asyncio.Lock()
        self.revoked = False

    def reset(self) -> None:
        # Unacked work is redone from the committed offsets by whoever owns the partitions next.
        self.store.discard()
        self.pipeline = build_pipeline(self.store)
        self.unacked.clear()
        self.revoked = False

    def flush_due(self) -> bool:
        return bool(self.unacked) and (
            self.pipeline.lake_rows_buffered >= settings.flush_max_rows
            or time.monotonic() - self.last_flush >= settings.flush_max_seconds)

    async def flush_and_ack(self) -> None:
        """Lake sinks, then table state, then producer, then acks: the commit never passes unsunk data."""
        await asyncio.to_thread(self.pipeline.flush_lake)
        self.store.flush()
        await app.producer.flush()  # changelog + dead letters acknowledged by the broker
        for event in self.unacked:
            await self.stream.ack(event)
        self.unacked.clear()
        self.last_flush = time.monotonic()


_live: _LiveState | None = None


def build_pipeline(store: FaustTableStore) -> Pipeline:
    return Pipeline(lake=Lake.from_settings(settings), store=store,
                    online=OnlineStore(redis.Redis.from_url(settings.redis_url)),
                    allowed_lateness_ms=settings.allowed_lateness_ms)


@app.on_partitions_revoked.connect
async def _on_revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001
    if _live is not None:
        _live.revoked = True


@app.task
async def _on_worker_start() -> None:
    from streams.topics import ensure_topics_async

    start_http_server(settings.metrics_port, addr=settings.host)
    await ensure_topics_async(settings)


@app.timer(interval=0.5)
async def _idle_flush() -> None:
    # noack_take yields only when records arrive; without this, a quiet stream would hold its tail unflushed.
    live = _live
    if live is not None and live.flush_due() and not live.lock.locked():
        async with live.lock:
            await live.flush_and_ack()


async def _dead_letter_on_error(msg, sends: list) -> None:  # noqa: ANN001
    from streams.validation import Rejection, deadletter_record

    log.exception("processing failed at %s/%s/%s", msg.topic, msg.partition, msg.offset)
    value = deadletter_record(Rejection("processing_error", "unexpected error; see worker log"), topic=msg.topic,
                              partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
                              record_ts_ms=round(msg.timestamp * 1000))
    metrics.REJECTED.labels("processing_error").inc()
    sends.append(await deadletter_topic.send(key=msg.key, value=value))


@app.agent(clinical_topic)
async def process_clinical(stream) -> None:  # noqa: ANN001
    global _live
    live = _live = _LiveState()
    live.stream = stream
    async for events in stream.noack_take(settings.batch_max_events, within=settings.batch_max_seconds):
        async with live.lock:
            if live.revoked:
                live.reset()
            sends: list = []
            for event in events:
                msg = event.message
                live.store.bind(event)
                try:
                    dead = live.pipeline.process(RawRecord(msg.topic, msg.partition, msg.offset,
                                                           round(msg.timestamp * 1000), msg.key, msg.value))
                except Exception:  # a bug must not stop the stream: dead-letter the record and go on
                    await _dead_letter_on_error(msg, sends)
                    continue
                if dead is not None:
                    sends.append(await deadletter_topic.send(key=dead.key, value=dead.value))
                highwater = app.consumer.highwater(msg.tp)
                if highwater is not None:
                    metrics.CONSUMER_LAG.labels(msg.topic, str(msg.partition)).set(max(highwater - msg.offset - 1, 0))
            live.pipeline.flush_online()
            live.unacked.extend(events)
            if sends:
                metrics.EVENTS_OUT.labels("deadletter").inc(len(sends))
            if live.flush_due():
                await live.flush_and_ack()
