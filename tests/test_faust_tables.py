"""The feature state's Faust-table adapter, over a dict standing in for the table (unit test)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np

from test_features_engine import long_stream, same

from tables.faust_tables import FaustTableStore
from tables.state import FeatureEngine, FeatureUpdate


def _event(partition: int) -> SimpleNamespace:
    """A record of a partition, as the store reads it (a Faust Message)."""
    return SimpleNamespace(partition=partition, topic="source")


def test_apply_in_steps_writes_everything_and_reads_stay_consistent() -> None:
    table: dict = {"gone": {"v": 0}}
    store = FaustTableStore(table)
    events = [_event(0), _event(1)]
    store.bind(events[0])
    for i in range(3):
        store.set(f"p0-{i}", {"v": i})
    store.delete("gone")
    store.bind(events[1])
    for i in range(2):
        store.set(f"p1-{i}", {"v": i})
    generation = store.seal()

    steps = store.apply_steps(generation, step=2)
    assert next(steps) == 2
    store.bind(events[0])
    assert store.get("p0-2") == {"v": 2}  # not in the table yet: read from the sealed generation
    assert store.get("gone") is None  # deleted in the generation, still in the table
    assert list(steps) == [2, 2]
    assert table == {**{f"p0-{i}": {"v": i} for i in range(3)}, **{f"p1-{i}": {"v": i} for i in range(2)}}
    assert store.get("p0-2") == {"v": 2}  # now from the table
    assert store.apply(store.seal()) == 0  # nothing left pending


class _RecordingTable(dict):
    """A table that logs every write, in order: what the changelog would carry."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.log: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, _DELETE))
        super().__delitem__(key)


_DELETE = object()


def _engine(table: dict) -> tuple[FeatureEngine, FaustTableStore]:
    store = FaustTableStore(table)
    store.bind(_event(0))
    return FeatureEngine(store), store


def _redis_after(vectors: dict[str, FeatureUpdate], updates: list[Any]) -> dict[str, FeatureUpdate]:
    """The online store's rule: a vector lands unless the stored one is newer."""
    for u in updates:
        if isinstance(u, FeatureUpdate) and (u.patient_id not in vectors or vectors[u.patient_id].ts_ms <= u.ts_ms):
            vectors[u.patient_id] = u
    return vectors


def test_a_crash_part_way_through_applying_a_flush_changes_no_result() -> None:
    """A worker killed while its flush's state writes reach the changelog leaves any prefix of them behind.
    The next owner redoes the flush's records from the committed offset on that state: every later vector,
    and the online store, must end as if nothing had happened (the lake already holds the flush's rows)."""
    events = long_stream(days=1.3, seed=7, patients=3)
    # The flush spans more event time than the lateness and several state buckets, and retires old buckets.
    cut1, cut2 = len(events) * 4 // 5, len(events) * 4 // 5 + 300
    committed, flush, after = events[:cut1], events[cut1:cut2], events[cut2:]

    table = _RecordingTable()
    engine, store = _engine(table)
    for ev in committed:
        engine.process(ev)
    store.flush()
    before = dict(table)
    table.log.clear()
    flushed = [engine.process(ev) for ev in flush]
    store.flush()
    writes = list(table.log)
    redis = _redis_after({}, flushed)
    expected_after = [engine.process(ev) for ev in after]
    assert any(v is _DELETE for _, v in writes) and any(k.startswith("c|") for k, _ in writes)

    for k in range(len(writes) + 1):
        partial = dict(before)
        for key, value in writes[:k]:
            if value is _DELETE:
                partial.pop(key, None)
            else:
                partial[key] = value
        redo_engine, redo_store = _engine(partial)
        redone = [redo_engine.process(ev) for ev in flush]
        redo_store.flush()
        online = _redis_after(dict(redis), redone)
        assert online.keys() == redis.keys()
        for p, u in redis.items():
            assert online[p].ts_ms == u.ts_ms and np.array_equal(online[p].values, u.values, equal_nan=True), \
                f"{p}'s online vector differs after {k} of {len(writes)} writes"
        got_after = [redo_engine.process(ev) for ev in after]
        for i, (a, b) in enumerate(zip(expected_after, got_after)):
            assert same(a, b), f"after {k} of {len(writes)} writes, event {i}: {a!r} != {b!r}"


class _FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.capacity, self.closed = capacity, False

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any, headers: list) -> Any:
        if self.closed or (self.records and len(self.records) >= self.capacity):
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class _FakeProducer:
    """aiokafka's batch interface; each batch's delivery future is resolved by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, _FakeBatch, asyncio.Future]] = []

    def create_batch(self) -> _FakeBatch:
        return _FakeBatch(capacity=2)

    async def send_batch(self, batch: _FakeBatch, topic: str, *, partition: int) -> asyncio.Future:
        assert batch.closed, "a batch must be closed before it is sent"
        future = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, future))
        return future


class _FakeStore:
    def __init__(self) -> None:
        self.dbs: dict[int, dict[bytes, bytes]] = {}
        self._key_index: dict[bytes, int] = {}
        self.persisted: dict[int, int] = {}

    def _db_for_partition(self, partition: int) -> Any:
        db = self.dbs.setdefault(partition, {})
        return SimpleNamespace(get=db.get, put=db.__setitem__, delete=db.pop)

    def _encode_key(self, key: str) -> bytes:
        return key.encode()

    def _encode_value(self, value: Any) -> bytes:
        return repr(value).encode()

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp.partition] = offset


def _fake_table(producer: _FakeProducer) -> Any:
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer), in_transaction=False,
                          conf=SimpleNamespace(producer_acks=-1))
    return SimpleNamespace(data=_FakeStore(), app=app, changelog_topic=SimpleNamespace(get_topic_name=lambda: "cl"),
                           use_partitioner=False, is_global=False, window=None,
                           _verify_source_topic_partitions=lambda topic: None)


def test_changelog_writer_sends_a_partitions_next_batch_only_after_the_previous_was_acknowledged() -> None:
    """A failed batch must leave a prefix of the writes in the changelog, never a later batch alone."""
    from tables.faust_tables import ChangelogWriter

    async def main() -> None:
        producer = _FakeProducer()
        writer = ChangelogWriter.of(_fake_table(producer))
        ordered = [(f"v|p|{i}", [i]) for i in range(5)]  # three batches of at most two

        task = asyncio.create_task(writer.write(0, ordered, "source"))
        await asyncio.sleep(0.01)
        assert len(producer.sent) == 1 and not task.done()  # the second waits for the first's acknowledgement
        producer.sent[0][2].set_result(SimpleNamespace(offset=40))
        await asyncio.sleep(0.01)
        assert len(producer.sent) == 2
        producer.sent[1][2].set_exception(RuntimeError("batch expired"))
        try:
            await asyncio.wait_for(task, 5)
        except RuntimeError as exc:
            assert "expired" in str(exc)
        else:
            raise AssertionError("a failed batch must fail the write")
        assert len(producer.sent) == 2  # the third was never sent

        producer = _FakeProducer()
        writer = ChangelogWriter.of(_fake_table(producer))
        task = asyncio.create_task(writer.write(1, ordered, "source"))
        for i in range(3):
            while len(producer.sent) <= i:
                await asyncio.sleep(0.001)
            producer.sent[i][2].set_result(SimpleNamespace(offset=100 + 2 * i))
        assert await asyncio.wait_for(task, 5) == 5
        await writer.delivered()
        assert [len(b.records) for _, b, _ in producer.sent] == [2, 2, 1]
        assert writer.store.persisted == {1: 104}  # the last batch's base offset + its records - 1
        assert writer.store.dbs[1] == {f"v|p|{i}".encode(): repr([i]).encode() for i in range(5)}

    asyncio.run(main())
