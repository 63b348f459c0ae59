"""The feature state's Faust-table adapter, over a dict standing in for the table (unit test)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from test_features_engine import long_stream, same

from tables.faust_tables import FaustTableStore
from tables.state import FeatureEngine, FeatureUpdate


class _Event:  # Faust keeps a weak reference to the current event
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _event(partition: int) -> _Event:
    return _Event(partition)


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
