"""The feature state in a RocksDB-backed, changelogged Faust table.

The feature engine (tables/state.py) reads and writes a plain StateStore. This
adapter puts that store on a Faust table, with two twists:

* Writes are buffered and applied only at flush, after every sink holds the data
  of the events that caused them. Otherwise a crash between a state write and a
  sink flush would make the redelivered events look like duplicates and their
  rows would never reach the sinks.
* A flush's writes go in `write_rank` order, so a crash part-way through leaves
  a state that redoing the flush's records repairs (tables/state.py).
* A real Faust table is written by `ChangelogWriter`: straight to the partition's
  RocksDB and to its changelog in producer batches, as `table[key] = value` would,
  without Faust's per-key send machinery (~150 µs per key on the event loop).
  Other tables (plain mappings in tests) get `table[key] = value`, with an event
  of the key's partition set as the current event (Faust's stores route by it).
"""
from __future__ import annotations

import asyncio
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from faust.streams import _current_event  # private, but it is how Faust routes a key to its partition
from faust.types import TP

from tables.state import write_rank

_DELETED = object()


class _Routed:
    """What Faust's table and RocksDB store read of the current event: its message (partition, topic)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, message: Any) -> None:
        self.message = message


@contextmanager
def as_event(message: Any) -> Iterator[None]:
    """Route table reads and writes to `message`'s partition, as if Faust's stream were processing it."""
    routed = _Routed(message)  # held here: Faust keeps only a weak reference
    token = _current_event.set(weakref.ref(routed))
    try:
        yield
    finally:
        _current_event.reset(token)


class FaustTableStore:
    """A StateStore over a Faust table; `bind` the record (a Faust Message) before each engine call.

    Writes accumulate in the current generation. `seal` closes it (its events' rows are
    being written to the lake in the background) and `apply` writes a sealed
    generation to the table once the lake holds those rows. Reads see the newest
    write of a key, whether current, sealed or in the table.
    """

    def __init__(self, table: Any, batched: bool = True) -> None:
        """batched: write a RocksDB Faust table with ChangelogWriter (else per key, as other tables)."""
        self.table = table
        self.batched = batched
        self._message: Any = None
        self._current: dict[int, dict[str, Any]] = {}
        self._messages: dict[int, Any] = {}  # per partition, a record of it (routes the writes)
        self._sealed: list[tuple[dict[int, dict[str, Any]], dict[int, Any]]] = []

    def bind(self, message: Any) -> None:
        """Keys touched from now on belong to this record's partition."""
        self._message = message

    def _partition(self) -> int:
        return self._message.partition

    def get(self, key: str) -> Any | None:
        p = self._partition()
        for writes in (self._current, *(gen for gen, _ in reversed(self._sealed))):
            part = writes.get(p)
            if part is not None and key in part:
                value = part[key]
                return None if value is _DELETED else value
        with as_event(self._message):
            return self.table.get(key)

    def set(self, key: str, value: Any) -> None:
        p = self._partition()
        self._current.setdefault(p, {})[key] = value
        self._messages[p] = self._message

    def delete(self, key: str) -> None:
        p = self._partition()
        self._current.setdefault(p, {})[key] = _DELETED
        self._messages[p] = self._message

    @property
    def pending_writes(self) -> int:
        return sum(len(w) for w in self._current.values())

    def seal(self) -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
        generation = (self._current, self._messages)
        self._sealed.append(generation)
        self._current, self._messages = {}, {}
        return generation

    def apply(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]]) -> int:
        """Write a sealed generation to the table (and so to RocksDB and the changelog)."""
        return sum(self.apply_steps(generation))

    def apply_steps(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]],
                    step: int = 200) -> Iterator[int]:
        """`apply` through `table[key] = value`, yielding the number of keys written after every `step` of
        them, so a caller on the event loop can let other work run in between. Reads see the generation
        until the last step."""
        writes, messages = generation
        n = 0
        for p, ordered in _in_write_order(writes):
            with as_event(messages[p]):
                for key, value in ordered:
                    if value is _DELETED:
                        if key in self.table:
                            del self.table[key]
                    else:
                        self.table[key] = value
                    n += 1
                    if n == step:
                        yield n
                        n = 0
        self._retire(generation)
        if n:
            yield n

    async def apply_async(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]]) -> int:
        """`apply` from the event loop, returning once the changelog holds the writes. Reads see the
        generation until then."""
        writer = ChangelogWriter.of(self.table) if self.batched else None
        if writer is None:
            n = 0
            for written in self.apply_steps(generation):
                n += written
                await asyncio.sleep(0)
            producer = getattr(getattr(self.table, "app", None), "producer", None)
            if producer is not None:
                await producer.flush()  # Faust's per-key sends were only queued
            return n
        writes, messages = generation
        n = sum([await writer.write(p, ordered, messages[p].topic) for p, ordered in _in_write_order(writes)])
        await writer.delivered()
        self._retire(generation)
        return n

    def _retire(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]]) -> None:
        if generation in self._sealed:  # a reset (rebalance) may have dropped it already
            self._sealed.remove(generation)

    def flush(self) -> int:
        return self.apply(self.seal())

    def discard(self) -> None:
        self._current, self._messages = {}, {}
        self._sealed.clear()


def _json_codec_is_orjson(table: Any) -> bool:
    """True if the table encodes values as Faust's "json" codec does with orjson (no whitespace, so a JSON
    array's text is its elements' texts joined by commas)."""
    from faust.utils import json as faust_json

    serializer = getattr(table, "value_serializer", None) or getattr(table.app.conf, "value_serializer", None)
    return serializer == "json" and getattr(faust_json, "orjson", None) is not None


def _in_write_order(writes: dict[int, dict[str, Any]]) -> Iterator[tuple[int, list[tuple[str, Any]]]]:
    """Each partition's writes in the engine's crash-safe order (write_rank), not the order keys were first
    touched."""
    for p, part in writes.items():
        yield p, sorted(part.items(), key=lambda kv: write_rank(kv[0], kv[1] is _DELETED))


class ChangelogWriter:
    """Writes keys of a RocksDB-backed Faust table as `table[key] = value` and `del table[key]` do, in bulk.

    Faust sends one changelog message per key through its producer buffer: a future, a task and callbacks
    each, and a `flush` that waits on an event per message; ~150 µs per key on the worker's event loop. This
    puts the same bytes (the table's own key and value serializers) into the partition's RocksDB and into
    producer batches of the partition's changelog, in the given order, then records the last changelog
    offset as the partition's persisted offset (what Faust's per-message callback does, so recovery reads
    the changelog from there).

    A partition's next batch is sent only once the broker acknowledged the previous one, so a failed batch
    leaves a prefix of the writes in the changelog, never a later batch without an earlier one (a context
    without its rows, for a worker restoring from the changelog). Faust's per-key sends could leave such a
    hole. The cost is a round trip per 256 KiB batch beyond a partition's first, in the background.
    """

    _YIELD_EVERY = 500  # keys between returns to the event loop while encoding and putting

    def __init__(self, table: Any) -> None:
        self.table = table
        self.store = table.data
        # Values that carry their own JSON text (tables/state.py: BucketRows) skip the codec when the table's
        # codec would produce the same bytes: Faust's json codec, which is orjson when it is installed.
        self.json_values = _json_codec_is_orjson(table)
        self.topic = table.changelog_topic.get_topic_name()
        self._pending: list[tuple[Any, int, int]] = []  # (delivery future, partition, records in the batch)

    @classmethod
    def of(cls, table: Any) -> "ChangelogWriter | None":
        """The writer of a plain changelogged RocksDB Faust table, partitioned like its source topics, written
        outside transactions and with acknowledged sends (it needs the offsets); None for anything else."""
        store = getattr(table, "data", None)
        if getattr(table, "changelog_topic", None) is None or not hasattr(store, "_db_for_partition"):
            return None
        app = table.app
        if (table.use_partitioner or table.is_global or app.in_transaction or app.conf.producer_acks == 0
                or table.window is not None):  # windowed tables also track key expiry per write
            return None
        return cls(table)

    async def write(self, partition: int, ordered: list[tuple[str, Any]], source_topic: str) -> int:
        """Put the writes into RocksDB and queue them for the changelog; `delivered` waits for the latter.
        source_topic: the topic of the records behind them (its partition count must match the table's)."""
        self.table._verify_source_topic_partitions(source_topic)  # as Faust does on a table's first write
        store = self.store
        db = store._db_for_partition(partition)
        key_index = store._key_index
        producer = self.table.app.producer._ensure_producer()  # the app's aiokafka producer
        batch, in_batch, n = producer.create_batch(), 0, 0
        for key, value in ordered:
            n += 1  # counted like apply_steps: every key of the generation
            if n % self._YIELD_EVERY == 0:
                await asyncio.sleep(0)
            key_bytes = store._encode_key(key)
            if value is _DELETED:
                if db.get(key_bytes) is None:  # as `del table[key]` is only done for a key present
                    continue
                db.delete(key_bytes)
                key_index.pop(key_bytes, None)
                value_bytes = None  # a tombstone, as Faust sends for a deleted key
            else:
                encoded = getattr(value, "json_bytes", None) if self.json_values else None
                value_bytes = encoded() if encoded is not None else store._encode_value(value)
                db.put(key_bytes, value_bytes)
                key_index[key_bytes] = partition
            if batch.append(key=key_bytes, value=value_bytes, timestamp=None, headers=[]) is None:  # full
                await self._send(producer, batch, partition, in_batch)
                batch, in_batch = producer.create_batch(), 0
                batch.append(key=key_bytes, value=value_bytes, timestamp=None, headers=[])  # a first always fits
            in_batch += 1
        if in_batch:
            await self._send(producer, batch, partition, in_batch)
        return n

    async def _send(self, producer: Any, batch: Any, partition: int, records: int) -> None:
        if self._pending and self._pending[-1][1] == partition:
            await self._pending[-1][0]  # acknowledged (else this raises) before the partition's next batch
        batch.close()  # else aiokafka may append other sends to this partition to it, and `records` would be short
        future = await producer.send_batch(batch, self.topic, partition=partition)
        self._pending.append((future, partition, records))

    async def delivered(self) -> None:
        """Wait until the broker acknowledged every batch written; then set each partition's persisted
        offset to its last changelog record. Raises if a batch failed (its records stay unacked)."""
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*(future for future, _, _ in pending))
        last: dict[int, int] = {}
        for metadata, (_, partition, records) in zip(results, pending):
            last[partition] = max(last.get(partition, -1), metadata.offset + records - 1)
        for partition, offset in last.items():
            self.store.set_persisted_offset(TP(self.topic, partition), offset)
