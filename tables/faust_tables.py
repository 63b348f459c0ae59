"""The feature state in a RocksDB-backed, changelogged Faust table.

The feature engine (tables/state.py) reads and writes a plain StateStore. This
adapter puts that store on a Faust table, with two twists:

* Writes are buffered and applied only at flush, after every sink holds the data
  of the events that caused them. Otherwise a crash between a state write and a
  sink flush would make the redelivered events look like duplicates and their
  rows would never reach the sinks.
* A flush's writes go in `write_rank` order, so a crash part-way through leaves
  a state that redoing the flush's records repairs (tables/state.py).
* Faust's RocksDB store picks a key's partition from the event being processed.
  Flushes happen outside any event, so each partition's writes are applied with
  an event of that partition set as the current event.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from faust.streams import _current_event  # private, but it is how Faust routes a key to its partition

from tables.state import write_rank

_DELETED = object()


@contextmanager
def as_event(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class FaustTableStore:
    """A StateStore over a Faust table; `bind` the event before each engine call.

    Writes accumulate in the current generation. `seal` closes it (its events' rows are
    being written to the lake in the background) and `apply` writes a sealed
    generation to the table once the lake holds those rows. Reads see the newest
    write of a key, whether current, sealed or in the table.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._event: Any = None
        self._current: dict[int, dict[str, Any]] = {}
        self._events: dict[int, Any] = {}
        self._sealed: list[tuple[dict[int, dict[str, Any]], dict[int, Any]]] = []

    def bind(self, event: Any) -> None:
        """Keys touched from now on belong to this event's partition."""
        self._event = event

    def _partition(self) -> int:
        return self._event.message.partition

    def get(self, key: str) -> Any | None:
        p = self._partition()
        for writes in (self._current, *(gen for gen, _ in reversed(self._sealed))):
            part = writes.get(p)
            if part is not None and key in part:
                value = part[key]
                return None if value is _DELETED else value
        with as_event(self._event):
            return self.table.get(key)

    def set(self, key: str, value: Any) -> None:
        p = self._partition()
        self._current.setdefault(p, {})[key] = value
        self._events[p] = self._event

    def delete(self, key: str) -> None:
        p = self._partition()
        self._current.setdefault(p, {})[key] = _DELETED
        self._events[p] = self._event

    @property
    def pending_writes(self) -> int:
        return sum(len(w) for w in self._current.values())

    def seal(self) -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
        generation = (self._current, self._events)
        self._sealed.append(generation)
        self._current, self._events = {}, {}
        return generation

    def apply(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]]) -> int:
        """Write a sealed generation to the table (and so to RocksDB and the changelog)."""
        return sum(self.apply_steps(generation))

    def apply_steps(self, generation: tuple[dict[int, dict[str, Any]], dict[int, Any]],
                    step: int = 200) -> Iterator[int]:
        """`apply`, yielding the number of keys written after every `step` of them, so a caller on the event
        loop can let other work run in between. Reads see the generation until the last step."""
        writes, events = generation
        n = 0
        for p, part in writes.items():
            # In the engine's crash-safe order (write_rank), not the order keys were first touched.
            for key, value in sorted(part.items(), key=lambda kv: write_rank(kv[0], kv[1] is _DELETED)):
                with as_event(events[p]):
                    if value is _DELETED:
                        if key in self.table:
                            del self.table[key]
                    else:
                        self.table[key] = value
                n += 1
                if n == step:
                    yield n
                    n = 0
        if generation in self._sealed:  # a reset (rebalance) may have dropped it already
            self._sealed.remove(generation)
        if n:
            yield n

    def flush(self) -> int:
        return self.apply(self.seal())

    def discard(self) -> None:
        self._current, self._events = {}, {}
        self._sealed.clear()
