"""The Faust app: `faust -A app worker -l info` starts a stream worker.

Agents live in agents/, tables in tables/; importing them registers them on `app`.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import faust
from faust.sensors.monitor import Monitor
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

from streams import topics
from streams.delivery import RecordInbox, wait_first_eagerly
from vitalstream.process import tune_gc, tune_gil
from vitalstream.settings import get_settings

settings = get_settings()
log = logging.getLogger(__name__)


class PerBatchMonitor(Monitor):
    """Faust's monitor without its per-record bookkeeping (timestamps, counters and dicts for every
    message, stream event and table access: ~10 % of the worker's time at a few thousand records/s).
    The worker's Prometheus metrics (agents/metrics.py) count records per batch instead; commits,
    sends, rebalances and assignments are still tracked here."""

    def on_message_in(self, tp, offset, message):  # noqa: ANN001, ANN201
        pass

    def on_stream_event_in(self, tp, offset, stream, event):  # noqa: ANN001, ANN201
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None):  # noqa: ANN001, ANN201
        pass

    def on_message_out(self, tp, offset, message):  # noqa: ANN001, ANN201
        pass

    def on_table_get(self, table, key):  # noqa: ANN001, ANN201
        pass

    def on_table_set(self, table, key, value):  # noqa: ANN001, ANN201
        pass

    def on_table_del(self, table, key):  # noqa: ANN001, ANN201
        pass

class VitalStreamConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer with a configurable fetch max wait (Faust hardcodes 1,500 ms) and minimum size.

    aiokafka keeps one fetch request in flight per broker, for the partitions with nothing buffered. When
    that request holds only quiet partitions (labs, doses, the patients topic between records), the broker
    parks it for the full max wait, and records arriving meanwhile on busy partitions wait behind it: up to
    1.5 s of latency at a few hundred events/s. A short max wait bounds that delay; a minimum size keeps
    fetches from returning a record or two each (each response is decoded in Python)."""

    def _create_worker_consumer(self, transport):  # noqa: ANN001, ANN202
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by consumer.start(), into its Fetcher
        consumer._fetch_min_bytes = settings.fetch_min_bytes  # likewise
        return consumer

    def last_poll_timestamp(self, tp: TP) -> int | None:
        """aiokafka's: when (wall-clock ms) the last fetch response that reported tp's highwater was processed."""
        return self._ensure_consumer().last_poll_timestamp(tp)


class VitalStreamConsumer(faust_aiokafka.Consumer):
    """Faust's consumer with the fetch settings above, and no commits past records it skipped.

    When Faust's fetch loop sees a partition's offsets jump, it records the offsets in between as a "gap"
    and counts them as done, so its next commit moves past them. Only the compacted patients topic has real
    holes. Elsewhere a jump means Faust skipped records (failover stress runs showed it); the agent seeks
    back and redelivers them (agents/clinical.py: _in_sequence), and a commit past them would lose them if
    the worker died first.
    """

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        # Faust's fetch loop delivers every record with `wait_first(on_message(record), suspend_flow.wait())`:
        # four tasks started and three cancelled per record. Inline instead, a backlog went from 1,069 to 1,417
        # events/s in back-to-back profiles (docs/benchmarks.md).
        if settings.faust_per_record_paths:  # the benchmark's baseline
            return await super().wait_first(*coros, timeout=timeout)
        return await wait_first_eagerly(super().wait_first, *coros, timeout=timeout)

    def _new_consumer_thread(self) -> VitalStreamConsumerThread:
        return VitalStreamConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def last_poll_timestamp(self, tp: TP) -> int | None:
        """Forwarded to the consumer thread, as Faust forwards `highwater` (the merge's freshness test)."""
        return self._thread.last_poll_timestamp(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if not topics.has_offset_holes(settings, tp.topic):
            log.warning("%s/%s: offsets %d-%d skipped by the fetch; not counting them as done", tp.topic,
                        tp.partition, offset_from, offset_to)
            return
        await super()._add_gap(tp, offset_from, offset_to)


class VitalStreamConductor(Conductor):
    """Faust's conductor; the records of a topic with an inbox in `inboxes` go straight into it (see
    streams/delivery.py: RecordInbox), not through Faust's channels and streams."""

    inboxes: dict[str, RecordInbox] = {}  # Kafka topic name -> inbox; filled by the agents at import

    def _build_handler(self, tp: TP, channels: Any) -> Any:
        inbox = self.inboxes.get(tp.topic)
        if inbox is None:
            return super()._build_handler(tp, channels)
        consumer = self.app.consumer
        return inbox.handler(tp, self.app.flow_control.acquire, consumer.on_buffer_full, consumer.on_buffer_drop)


class KafkaTransport(faust_aiokafka.Transport):
    Consumer = VitalStreamConsumer
    Conductor = VitalStreamConductor


# Coroutine functions awaited when the worker stops, before Faust stops the consumer, tables and producer.
before_stop: list[Callable[[], Awaitable[None]]] = []


class VitalStreamApp(faust.App):
    async def on_stop(self) -> None:
        for finish in before_stop:
            await finish()
        await super().on_stop()

    def _new_transport(self) -> KafkaTransport:
        return KafkaTransport(self.conf.broker_consumer, self)


app = VitalStreamApp(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store=settings.table_store,
    datadir=str(settings.worker_data_dir),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    processing_guarantee="at_least_once",  # exactly_once has open bugs; sinks are idempotent instead
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=1.0,
    producer_acks=-1,
    # Feature-state writes go to the changelog in producer batches (tables/faust_tables.py: ChangelogWriter);
    # Faust's 16 KiB default would make a flush's writes dozens of batches per partition, one round trip each.
    producer_max_batch_size=256 * 1024,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
    web_host=settings.host,
    web_bind=settings.host,
    web_port=settings.worker_port,
    web_enabled=True,
    autodiscover=False,
    stream_wait_empty=False,
    Monitor=PerBatchMonitor,
)

import agents.clinical  # noqa: E402,F401  (registers the agents and tables)

tune_gc(settings)  # after every import, before Faust starts anything
tune_gil(settings)

if __name__ == "__main__":
    app.main()
