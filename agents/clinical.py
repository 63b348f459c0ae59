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

_revoked = False


@app.on_partitions_revoked.connect
async def _on_revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001
    # Unacked work of revoked partitions will be redone by their next owner; drop ours at the next batch.
    global _revoked
    _revoked = True


@app.task
async def _ensure_topics() -> None:
    from streams.topics import ensure_topics_async

    await ensure_topics_async(settings)


@app.on_startup.connect
async def _start_metrics(app_, **kwargs) -> None:  # noqa: ANN001
    start_http_server(settings.metrics_port, addr=settings.host)


def build_pipeline(store: FaustTableStore) -> Pipeline:
    return Pipeline(lake=Lake.from_settings(settings), store=store,
                    online=OnlineStore(redis.Redis.from_url(settings.redis_url)),
                    allowed_lateness_ms=settings.allowed_lateness_ms)


@app.agent(clinical_topic)
async def process_clinical(stream) -> None:  # noqa: ANN001
    global _revoked
    store = FaustTableStore(feature_state)
    pipeline = build_pipeline(store)
    unacked: list = []
    last_flush = time.monotonic()

    async for events in stream.noack_take(settings.batch_max_events, within=settings.batch_max_seconds):
        if _revoked:
            _revoked = False
            store.discard()
            pipeline = build_pipeline(store)  # fresh buffers, caches and watermarks
            unacked.clear()
        sends = []
        for event in events:
            msg = event.message
            store.bind(event)
            try:
                dead = pipeline.process(RawRecord(msg.topic, msg.partition, msg.offset,
                                                  round(msg.timestamp * 1000), msg.key, msg.value))
            except Exception:  # a bug must not stop the stream: dead-letter the record and go on
                log.exception("processing failed at %s/%s/%s", msg.topic, msg.partition, msg.offset)
                from streams.validation import Rejection, deadletter_record

                dead_value = deadletter_record(Rejection("processing_error", "unexpected error; see worker log"),
                                               topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                               key=msg.key, value=msg.value, record_ts_ms=round(msg.timestamp * 1000))
                metrics.REJECTED.labels("processing_error").inc()
                sends.append(await deadletter_topic.send(key=msg.key, value=dead_value))
                continue
            if dead is not None:
                sends.append(await deadletter_topic.send(key=dead.key, value=dead.value))
            highwater = app.consumer.highwater(msg.tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(msg.topic, str(msg.partition)).set(max(highwater - msg.offset - 1, 0))
        pipeline.flush_online()
        unacked.extend(events)
        if sends:
            metrics.EVENTS_OUT.labels("deadletter").inc(len(sends))
        due = pipeline.lake_rows_buffered >= settings.flush_max_rows or \
            time.monotonic() - last_flush >= settings.flush_max_seconds
        if due:
            await asyncio.to_thread(pipeline.flush_lake)
            store.flush()
            await app.producer.flush()  # changelog + dead letters acknowledged by the broker
            for event in unacked:
                await stream.ack(event)
            unacked.clear()
            last_flush = time.monotonic()
