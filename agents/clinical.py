"""The live stream agent: clinical.* records through the shared Pipeline, in micro-batches.

Records come straight from Faust's fetch loop in batches (streams/delivery.py: RecordInbox), not
through a Faust stream, and are put in a deterministic order across topics (agents/ordering.py).
Redis gets each patient's latest vector every VITALSTREAM_ONLINE_FLUSH_MS (longer while catching
up on a backlog). The lake sinks flush by row count or seconds, in the background; then the
feature state is written to its table, the producer is flushed (changelog and dead letters
durable) and only then are the records acked, so the committed offset never passes data the
sinks do not hold. See docs/pipeline.md.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import AsyncIterator

import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from faust.types import TP
from prometheus_client import start_http_server

from agents import metrics
from agents.ordering import MERGE_RANK, TimestampMerge
from agents.pipeline import DeadLetter, Pipeline, RawRecord
from app import VitalStreamConductor, app, before_stop, settings
from sinks.lake import Lake
from sinks.online import OnlineStore
from streams import topics
from streams.delivery import RecordInbox
from streams.validation import Rejection, deadletter_record
from tables.faust_tables import FaustTableStore

log = logging.getLogger(__name__)

_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
clinical_topic = app.topic(*(topics.kafka_name(settings, t) for t in topics.CLINICAL_TOPICS), **_RAW)
# Faust's per-record delivery (the benchmark's baseline) goes through the agent's stream instead.
inbox = None if settings.faust_per_record_paths else RecordInbox(app.conf.stream_buffer_maxsize)
if inbox is not None:
    VitalStreamConductor.inboxes.update(dict.fromkeys(clinical_topic.topics, inbox))
deadletter_topic = app.topic(topics.kafka_name(settings, topics.DEADLETTER), **_RAW)

# Small RocksDB buffers: one DB per partition, and the defaults (64 MiB x3, 2 GiB cache) are sized for big servers.
feature_state = app.Table(
    "feature_state", default=None, partitions=settings.topic_partitions,
    options={"write_buffer_size": 8 << 20, "max_write_buffer_number": 2, "block_cache_size": 64 << 20},
)

class _LiveState:
    """What the agent holds between micro-batches; shared with the ticker."""

    def __init__(self) -> None:
        self.store = FaustTableStore(feature_state, batched=not settings.faust_per_record_paths)
        self.pipeline = build_pipeline(self.store)
        self.unacked: list = []  # Faust Messages, acked once the sinks hold their data
        self.merge = TimestampMerge(settings.merge_grace_ms, settings.merge_max_idle_ms)
        self.inflight: asyncio.Task | None = None
        self.online_since: float | None = None  # when the oldest vector not yet in Redis was computed
        self.backlogged = False
        self.last_flush = time.monotonic()
        self.lock = asyncio.Lock()
        self.revoked = False  # set from the start of a rebalance until the next batch of the new assignment
        self.stale_generation: int | None = None  # the consumer generation the last rebalance ended
        self.pending_sends: list = []  # dead-letter sends of unacked records
        self.online_writes: list[asyncio.Future] = []  # Redis writes of unacked records' vectors
        self.online_writing: asyncio.Future | None = None  # the latest Redis write started
        self.reseeked: dict[TP, float] = {}  # when each partition was last sought back
        self.log_start: dict[TP, int] = {}  # earliest offset of each assigned clinical partition
        self.next_offset: dict[TP, int] = {}  # past the last record delivered, per partition
        self.quiet: dict[TP, tuple[int, float]] = {}  # a lagging partition's next offset, and since when it is
        self.watchdog_at = 0.0

    def reset(self) -> None:
        # Unacked work is redone from the committed offsets by whoever owns the partitions next.
        if self.unacked:
            log.info("rebalance: %d unacked records left to redo from the committed offsets (%s)", len(self.unacked),
                     _ranges(self.unacked))
        self.store.discard()
        self.pipeline = build_pipeline(self.store)
        self.unacked.clear()
        self.pending_sends.clear()
        self.online_writes.clear()  # still conditional writes of real vectors: harmless if they land later
        self.reseeked = {}
        self.next_offset = {}
        self.quiet = {}
        self.merge.clear()
        self.online_since = None

    def online_due(self) -> bool:
        if self.online_since is None:
            return False
        if self.online_writing is not None and not self.online_writing.done():
            # Redis is behind: keep coalescing (a patient's newer vector replaces its older one) rather than
            # queue batch after batch. Under load, batches grow and cost less per event; idle, nothing waits.
            return False
        interval = settings.online_flush_backlog_ms if self.backlogged else settings.online_flush_ms
        return (time.monotonic() - self.online_since) * 1000 >= interval

    def flush_online(self) -> None:
        """Start writing the coalesced vectors to Redis, asynchronously: Redis time is not the event loop's.
        Writes land in order; `_complete` waits for them before acking their records. (A writer thread, tried
        before, waited ~1 ms per vector for the GIL behind the busy event loop.)"""
        batch = self.pipeline.take_online()
        self.online_since = None
        if batch is not None:
            write = asyncio.ensure_future(self.pipeline.write_online_async(batch))
            self.online_writes.append(write)
            self.online_writing = write

    def flush_due(self) -> bool:
        if not self.unacked:
            return False
        buffered = self.pipeline.lake_rows_buffered
        if self.inflight is not None and not self.inflight.done():
            # Keep processing while the previous batch is written; wait for it only when far behind.
            return buffered >= 4 * settings.flush_max_rows
        return buffered >= settings.flush_max_rows or time.monotonic() - self.last_flush >= settings.flush_max_seconds

    async def flush_and_ack(self) -> None:
        """Seal what is buffered and complete it in the background while processing goes on.

        Completion writes the lake objects, waits for the batch's Redis writes, then writes the
        table state (RocksDB and changelog), then flushes the producer (dead letters acknowledged), and
        only then acks the records, so the committed offset never passes data the sinks do not
        hold. One completion at a time.
        """
        self.flush_online()  # acked records must have their vectors in Redis too
        inflight = self.inflight
        if inflight is not None:
            waited = not inflight.done()
            # Keeps completions in order and applies back-pressure. Shielded: cancelling the waiter (the ticker
            # at shutdown) must not abandon a batch half-written.
            await asyncio.shield(inflight)
            if waited:
                self.quiet.clear()  # nothing was taken meanwhile: restart the fetch watchdog's clocks
        sealed = self.pipeline.seal_lake()
        generation = self.store.seal()
        messages, self.unacked = self.unacked, []
        sends, self.pending_sends = self.pending_sends, []
        online_writes, self.online_writes = self.online_writes, []
        self.last_flush = time.monotonic()
        self.inflight = asyncio.create_task(self._complete(sealed, generation, messages, sends, online_writes))

    async def _complete(self, sealed, generation, messages, sends, online_writes) -> None:  # noqa: ANN001
        try:
            for attempt in range(5):
                try:
                    await asyncio.to_thread(self.pipeline.write_lake, sealed)
                    break
                except Exception:
                    log.exception("lake write failed (attempt %d of 5)", attempt + 1)
                    if attempt == 4:
                        raise
                    await asyncio.sleep(2 ** attempt)
            # Redis, like the lake, must hold the batch before its state is written: from then on its records
            # are duplicates to a worker that redoes them, and would not write their vectors again.
            await asyncio.gather(*online_writes)
            # In write_rank order, so a crash part-way through leaves a state that redoing the batch repairs;
            # returns once the changelog holds it.
            await self.store.apply_async(generation)
            await app.producer.flush()  # dead letters
            await asyncio.gather(*sends)  # a dead letter that failed to send must not be acked away
            ack = app.consumer.ack
            for message in messages:
                ack(message)
        except Exception:
            _fatal("completing a batch failed")
        self.inflight = None


def _ranges(messages) -> str:  # noqa: ANN001
    """'topic/partition:first-last ...' of some records, for logs."""
    spans: dict = {}
    for m in messages:
        lo, hi = spans.get((m.topic, m.partition), (m.offset, m.offset))
        spans[(m.topic, m.partition)] = (min(lo, m.offset), max(hi, m.offset))
    return " ".join(f"{t}/{p}:{lo}-{hi}" for (t, p), (lo, hi) in sorted(spans.items()))


_RESEEK_INTERVAL_S = 5.0
_YIELD_AFTER_S = 0.005  # give the event loop a turn once processing ran this long (checked every 32 records)
_WATCHDOG_EVERY_S = 1.0


async def _in_sequence(live: _LiveState, messages: list) -> list:
    """Hold every partition to deliver its records in sequence, without holes.

    Each record must be the one right after the previous record delivered of its partition; the first after
    an assignment, the one at the committed offset (or the log start, if nothing is committed or retention
    deleted it). A record past that is dropped unacked and the partition sought back to where it must
    continue. Failover stress runs showed Faust skipping records: a worker that got a partition back resumed
    where its own earlier fetches had stopped, not at the committed offset; and a seek landing while Faust's
    fetch loop was still handing over an older batch left Faust's read offset past records it then dropped
    silently. Either way the records in between were never processed and later commits moved past them.
    (Records of an older generation were filtered out before, by _current. The compacted patients topic
    has holes by design and is not checked.)
    """
    kept = []
    for msg in messages:
        tp = msg.tp
        expected = live.next_offset.get(tp)
        first = expected is None
        if first:  # unchecked: a compacted topic, whose offsets have holes by design
            expected = None if topics.has_offset_holes(settings, tp.topic) else _next_offset(live, tp)
        if expected is None or msg.offset == expected:
            pass
        elif msg.offset < expected:
            if not first:  # delivered already (and being processed): a second copy would be out of order
                continue
            # Fetched before Faust's seek to the committed offsets (seen in restarts): committed records again,
            # i.e. duplicates to the sinks and the engine. Trust the fetch rather than drop them, in case
            # Faust's record of the commit is the wrong one.
            log.warning("%s/%s resumed at offset %d, before the committed offset %d Faust recorded",
                        msg.topic, msg.partition, msg.offset, expected)
        else:
            now = time.monotonic()
            if now - live.reseeked.get(tp, -_RESEEK_INTERVAL_S) >= _RESEEK_INTERVAL_S:
                log.warning("%s/%s delivered offset %d where %d was due (%s): seeking back", msg.topic,
                            msg.partition, msg.offset, expected, "first after the assignment" if first else "hole")
                metrics.RESUME_SEEKS.inc()
                live.reseeked[tp] = now
                await app.consumer.seek(tp, expected)
            continue
        live.next_offset[tp] = msg.offset + 1
        kept.append(msg)
    return kept


def _next_offset(live: _LiveState | None, tp: TP) -> int:
    """The offset tp continues at: past its last record delivered, else its committed offset (Faust records
    it at assignment; 0 is stored as None) or the log start, if retention deleted that. Not the fetch
    position: fetched is not yet delivered."""
    if live is not None:
        delivered = live.next_offset.get(tp)
        if delivered is not None:
            return delivered
    committed = app.consumer._committed_offset.get(tp) or 0
    return max(committed, live.log_start.get(tp, 0)) if live is not None else committed


def _fatal(what: str) -> None:
    """Stop hard. Nothing unacked is committed, so a restarted worker redoes it from the committed offsets;
    carrying on with a half-done batch could commit offsets past data the sinks do not hold."""
    log.critical("%s; exiting (70) so a supervisor restarts the worker", what, exc_info=True)
    logging.shutdown()
    os._exit(70)


def _highwater(tp: TP) -> int | None:
    try:
        return app.consumer.highwater(tp)
    except AssertionError:  # aiokafka: partition no longer assigned (a rebalance is under way)
        return None


def _fetched_ms(tp: TP) -> int | None:
    """When the fetch response that last reported tp's highwater was processed (wall-clock ms), if known."""
    try:
        return app.consumer.last_poll_timestamp(tp)
    except AssertionError:  # as in _highwater
        return None


_live: _LiveState | None = None


# One client for the worker's life; it connects on first use, on the worker's event loop. Its retry policy is
# explicit: a write that loses its connection resends its unanswered calls (sinks/online.py) up to 3 times, backing
# off 0.2-0.8 s, before the batch fails, which stops the worker (no socket timeout is set, so a slow Redis is
# waited for, not retried: a retried call could otherwise still run later on the old connection).
_REDIS = redis.asyncio.Redis.from_url(settings.redis_url,
                                      retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=2.0, base=0.1), 3))


def build_pipeline(store: FaustTableStore) -> Pipeline:
    return Pipeline(lake=Lake.from_settings(settings), store=store,
                    online=OnlineStore(async_client=_REDIS),
                    allowed_lateness_ms=settings.allowed_lateness_ms)


async def _finish_batch_in_flight() -> None:
    """On stop: let the micro-batch being processed end, and the batch being completed finish (lake, Redis,
    state, acks), before Faust stops the tables and the producer under them. The agent's lock is kept until
    exit: processing yields to the event loop mid-batch, and must not go on against stopped tables. Anything
    not acked is redone from the committed offsets anyway."""
    live = _live
    if live is None:
        return
    deadline = time.monotonic() + settings.session_timeout_s
    try:
        await asyncio.wait_for(live.lock.acquire(), settings.session_timeout_s)
        if live.inflight is not None and not live.inflight.done():
            await asyncio.wait_for(asyncio.shield(live.inflight), max(deadline - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        log.warning("stopping before the batch in flight completed; it is redone from the committed offsets")


before_stop.append(_finish_batch_in_flight)


@app.on_partitions_revoked.connect
async def _on_revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001
    # Faust seeks kept partitions back to their committed offsets after a rebalance, so uncommitted work
    # is redone by whoever owns each partition next. Finish the batch already being written first, so no
    # write of ours lands after the new owner has started.
    live = _live
    if live is None:
        return
    live.revoked = True
    # Records fetched in this generation and not yet processed are redelivered from the committed offsets:
    # drop those waiting in the inbox. Any still handed over after the rebalance (the rest of a fetched batch)
    # come ahead of the kept partitions' records re-read from the committed offsets; `_consume` drops them, or
    # they would be merged (and applied) before earlier records of their own partition.
    live.stale_generation = app.consumer_generation_id
    if inbox is not None:
        inbox.clear()
    async with live.lock:
        if live.inflight is not None:
            await asyncio.shield(live.inflight)
        live.reset()


@app.on_partitions_assigned.connect
async def _on_assigned(app_, assigned, **kwargs) -> None:  # noqa: ANN001
    live = _live
    if live is None:
        return
    if live.stale_generation is not None and app.consumer_generation_id == live.stale_generation:
        # A rejoin that kept the generation (possible for a follower with unchanged metadata): dropping this
        # generation's records would stall the worker. Accept them; the merge was reset at the revocation.
        log.warning("rebalance kept consumer generation %s: not dropping its records", live.stale_generation)
        live.stale_generation = None
    clinical = [tp for tp in assigned if topics.logical_name(settings, tp.topic) in topics.CLINICAL_TOPICS]
    if clinical:
        # Where each log starts: a partition whose committed offset retention deleted is caught up at its
        # log end, not at the committed offset (else the merge would wait one max idle for it).
        try:
            live.log_start.update(await app.consumer.earliest_offsets(*clinical))
        except Exception:
            log.exception("reading the log start offsets failed; assuming nothing was deleted")
        # The lake sinks' recovery lists the lake: once for the assignment, in a thread, not per partition
        # on the event loop. If it fails, each partition's first record recovers it (and fails the batch
        # properly if the lake is still unreachable): a crash here would take the whole app down.
        try:
            await asyncio.to_thread(live.pipeline.recover,
                                    {(topics.logical_name(settings, tp.topic), tp.partition) for tp in clinical})
        except Exception:
            log.exception("lake sink recovery at assignment failed; recovering per partition instead")


@app.task
async def _on_worker_start() -> None:
    from streams.topics import ensure_topics_async
    from vitalstream.process import log_build_statuses

    log_build_statuses()
    start_http_server(settings.metrics_port, addr=settings.host)
    await ensure_topics_async(settings)


def _caught_up(topic: str, partition: int) -> bool:
    """True when nothing more of (topic, partition) is waiting at the broker for this worker."""
    tp = TP(topics.kafka_name(settings, topic), partition)
    highwater = _highwater(tp)
    return highwater is not None and _next_offset(_live, tp) >= highwater


def _fetched_at(topic: str, partition: int) -> int | None:
    return _fetched_ms(TP(topics.kafka_name(settings, topic), partition))


# Every half of the shorter of the merge grace and the Redis interval, but at most 200 times a second (a tick with
# nothing due costs a few tens of microseconds): with the 5 ms Redis interval, every 5 ms.
_TICK_S = max(min(settings.merge_grace_ms, settings.online_flush_ms), 10) / 2000


@app.task
async def _ticker() -> None:
    """Every _TICK_S after the previous tick's work ended. (Not Faust's app.timer: a tick that waits for the
    previous batch to complete, which is back-pressure by design, made it warn "overlapping" many times a
    second under load.)"""
    while not app.should_stop:
        await asyncio.sleep(_TICK_S)
        if app.should_stop:  # stopping while asleep: the tables and producer are going away
            break
        await _on_tick()


async def _on_tick() -> None:
    # The agent runs only when records arrive: release records that waited out their grace, and flush a
    # quiet stream's tail, from here.
    live = _live
    if live is None or live.lock.locked():
        return
    try:
        async with live.lock:
            # From a revocation until the new assignment's first batch there is nothing to release or flush. The
            # watchdog runs regardless: if every record a partition delivers is out of sequence, that first batch
            # never comes (seen with two workers starting on a backlog: one sat idle for good).
            if not live.revoked:
                if live.merge.buffered:
                    await _process_released(live)
                    if live.revoked:  # revoked mid-batch: nothing of it may be acked (see _on_revoked)
                        return
                if live.online_due():
                    live.flush_online()
                if live.flush_due():
                    await live.flush_and_ack()
            await _watch_fetching(live)
    except Exception:
        _fatal("the ticker failed")


def _error_dead_letter(msg) -> DeadLetter:  # noqa: ANN001
    log.exception("processing failed at %s/%s/%s", msg.topic, msg.partition, msg.offset)
    value = deadletter_record(Rejection("processing_error", "unexpected error; see worker log"), topic=msg.topic,
                              partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
                              record_ts_ms=round(msg.timestamp * 1000))
    metrics.REJECTED.labels("processing_error").inc()
    return DeadLetter(msg.key, value, "processing_error")


async def _send_dead_letter(live: _LiveState, dead: DeadLetter) -> None:
    live.pending_sends.append(await deadletter_topic.send(key=dead.key, value=dead.value))
    metrics.EVENTS_OUT.labels("deadletter").inc()


async def _watch_fetching(live: _LiveState) -> None:
    """Restart fetching of an assigned partition that has records waiting but delivered none for a while.

    After a failover or restart, a partition was seen (about one run in ten) never to deliver a record:
    assigned, active and unpaused in Faust, lagging, yet nothing arrived. One cause, seen in a worker log: a
    seek (Faust's to the committed offsets, or `_in_sequence`'s) while Faust's fetch loop was still handing
    over a batch fetched before it; the loop then set Faust's read offset back past the batch, and Faust drops
    fetched records below its read offset silently. Seeking again, to where the partition must continue (past
    the last record delivered, else its committed offset or log start), resets both aiokafka's fetch position
    and Faust's read offset. This must happen well before the merge's max idle: past that, the merge lets the
    partition's other topics go, and its records would arrive too late (dead-lettered as late events).
    """
    now = time.monotonic()
    if now - live.watchdog_at < _WATCHDOG_EVERY_S:
        return
    if app.rebalancing:  # until Faust's recovery resumes the flow, partitions are paused by design
        live.quiet.clear()
        return
    live.watchdog_at = now
    stall_s = min(settings.fetch_stall_s, settings.merge_max_idle_ms / 3000)
    consumer = app.consumer
    for tp in consumer.assignment():
        if topics.logical_name(settings, tp.topic) not in topics.CLINICAL_TOPICS:
            continue
        highwater = _highwater(tp)
        next_offset = _next_offset(live, tp)
        if highwater is None or next_offset >= highwater:
            live.quiet.pop(tp, None)
            continue
        seen, since = live.quiet.get(tp, (None, now))
        if seen != next_offset:  # records were delivered since the last check
            live.quiet[tp] = (next_offset, now)
            continue
        if now - since < stall_s:
            continue
        log.warning("%s/%s: %d records waiting, none delivered for %.0f s (read offset %s, active=%s, paused=%s): "
                    "seeking to %d", tp.topic, tp.partition, highwater - next_offset, now - since,
                    consumer._read_offset.get(tp), tp in consumer._get_active_partitions(),
                    tp in consumer._paused_partitions, next_offset)
        metrics.FETCH_RESUMED.inc()
        consumer._buffered_partitions.discard(tp)
        consumer.resume_partitions([tp])
        await consumer.seek(tp, next_offset)
        live.quiet[tp] = (next_offset, now)


async def _process_released(live: _LiveState) -> None:
    """Run the records the merge releases through the pipeline; write Redis once for all of them."""
    # The grace on the monotonic clock (immune to clock steps). Fetch stamps are aiokafka's wall-clock times,
    # compared only with each other; a step back of the clock can let a record go on a highwater up to the
    # step older than its fetch, until that topic's next fetch.
    released = live.merge.release(time.monotonic() * 1000, _caught_up,
                                  _fetched_at if settings.merge_fresh_highwaters else None)
    # Released records are owed an ack whatever happens next.
    live.unacked.extend(msg for _, msg in released)
    since_yield = time.perf_counter()
    for i, (rec, msg) in enumerate(released):
        dead = _process_one(live, rec, msg)
        if dead is not None:
            await _send_dead_letter(live, dead)
        if i & 31 == 31 and time.perf_counter() - since_yield > _YIELD_AFTER_S:
            # Let the rest of the event loop in (Redis replies, the fetch loop): each await of a Redis write
            # otherwise waits for the whole batch. Still under live.lock, so the ticker, the revocation and the
            # stop hook wait; only the batch being completed (`_complete`) and Redis writes run meanwhile.
            await asyncio.sleep(0)
            since_yield = time.perf_counter()
            if live.revoked:  # a rebalance began: this uncommitted work is dropped and redone anyway
                return
    _record_lag(msg for _, msg in released)
    live.pipeline.publish_counts()
    if live.online_since is None and live.pipeline.online is not None and live.pipeline.online.buffered:
        live.online_since = time.monotonic()
    if live.online_due():
        live.flush_online()


def _process_one(live: _LiveState, rec: RawRecord, msg) -> DeadLetter | None:  # noqa: ANN001
    """One record through the pipeline; the dead letter to send, if any. Synchronous: most records
    produce nothing to await, and a coroutine per record is measurable at thousands per second."""
    live.store.bind(msg)
    try:
        return live.pipeline.process(rec)
    except OSError:  # the lake (or another dependency) failed: not the record's fault, so never dead-letter it
        raise
    except Exception:  # a bug must not stop the stream: dead-letter the record and go on
        return _error_dead_letter(msg)


def _record_lag(messages) -> None:  # noqa: ANN001
    """Consumer lag per topic-partition after a batch: set once per partition, not per record."""
    last = {}
    for msg in messages:
        last[msg.tp] = msg
    for tp, msg in last.items():
        highwater = _highwater(tp)
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(msg.topic, str(msg.partition)).set(max(highwater - msg.offset - 1, 0))


@app.agent(clinical_topic)
async def process_clinical(stream) -> None:  # noqa: ANN001
    global _live
    live = _live = _LiveState()
    try:
        await _consume(live, stream)
    except Exception:
        # A restarted agent would start from empty state while its predecessor's records stay unacked.
        _fatal("the stream agent failed")


def _current(live: _LiveState, msg) -> bool:  # noqa: ANN001
    """False for a record fetched before the latest rebalance (or during it).

    The fetch loop may hand over records fetched before the rebalance after it (e.g. the rest of a fetched
    batch), ahead of the records Faust then re-reads from the committed offsets.
    Merged, they would go first: e.g. a vital moving a patient's time more than the allowed lateness past a
    re-read earlier lab, which would then be dead-lettered as late instead of applied.
    Every record is redelivered from the committed offset anyway, so dropping (and never acking) them loses
    nothing. A record's generation_id is the consumer generation it was fetched in (None if a transport does
    not record it: then nothing can be told apart, and nothing is dropped).
    """
    generation = msg.generation_id
    if generation is None:
        return True
    return generation == app.consumer_generation_id and generation != live.stale_generation


async def _batches(stream) -> AsyncIterator[list]:  # noqa: ANN001
    """The fetched records, a batch at a time, as Faust Messages (acked by `_LiveState._complete`)."""
    if inbox is None:  # the baseline: through the agent's Faust stream
        async for events in stream.noack_take(settings.batch_max_events, within=settings.batch_max_seconds):
            yield [event.message for event in events]
        return
    aiter(stream.channel)  # what iterating the stream would do first: subscribe the consumer to the topics
    wait_until_producer_ebb = app.producer.buffer.wait_until_ebb
    while not app.should_stop:
        # A turn for the rest of the event loop between batches, outside the agent's lock (the ticker finds it
        # locked whenever processing yields mid-batch); `take` returns at once while records wait.
        await asyncio.sleep(0)
        batch = await inbox.take(settings.batch_max_events)
        await wait_until_producer_ebb()  # Faust's back-pressure when dead letters outrun the broker
        yield batch


async def _consume(live: _LiveState, stream) -> None:  # noqa: ANN001
    async for fetched in _batches(stream):
        async with live.lock:
            current = [msg for msg in fetched if _current(live, msg)]
            current = await _in_sequence(live, current)
            # Here too, not only from the ticker: under load the agent holds the lock nearly all the time.
            await _watch_fetching(live)
            if len(current) < len(fetched):
                metrics.STALE_DROPPED.inc(len(fetched) - len(current))
            if not current:
                continue
            live.revoked = False
            # Catching up on a backlog (far behind the highwater, on records older than the backlog interval):
            # coalesce Redis writes over that longer interval. After a brief stall at live rates records wait too,
            # but a few seconds of coalescing would then add seconds to records only a little late.
            last = current[-1]
            highwater = _highwater(last.tp)
            live.backlogged = (highwater is not None and highwater - last.offset > settings.batch_max_events
                               and time.time() - last.timestamp > settings.online_flush_backlog_ms / 1000)
            now_ms = time.monotonic() * 1000  # merge timing only (see TimestampMerge)
            # A record's fetch: its partition's last fetch response now, that response or a newer one (a
            # partition is fetched again only once its buffered records were delivered): erring late is safe.
            stamps: dict[TP, float] = {}
            for msg in current:
                rec = RawRecord(topics.logical_name(settings, msg.topic), msg.partition, msg.offset,
                                round(msg.timestamp * 1000), msg.key, msg.value)
                if rec.topic in MERGE_RANK:
                    stamp = stamps.get(msg.tp)
                    if stamp is None:
                        got = _fetched_ms(msg.tp) if settings.merge_fresh_highwaters else None
                        stamp = stamps[msg.tp] = float("inf") if got is None else got
                    live.merge.add(rec, msg, now_ms, stamp)
                else:  # adverse events (and anything unexpected) need no ordering
                    dead = _process_one(live, rec, msg)
                    if dead is not None:
                        await _send_dead_letter(live, dead)
                    live.unacked.append(msg)
                    _record_lag([msg])
            await _process_released(live)
            if live.revoked:  # revoked mid-batch: nothing of it may be acked (see _on_revoked)
                continue
            if live.flush_due():
                await live.flush_and_ack()
