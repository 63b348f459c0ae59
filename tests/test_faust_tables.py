"""The feature state's Faust-table adapter, over a dict standing in for the table (unit test)."""
from __future__ import annotations

from types import SimpleNamespace

from tables.faust_tables import FaustTableStore


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
