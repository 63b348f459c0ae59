"""The feature state in a RocksDB-backed, changelogged Faust table.

The feature engine (tables/state.py) reads and writes a plain StateStore. This
adapter puts that store on a Faust table, with two twists:

* Writes are buffered and applied only at flush, after every sink holds the data
  of the events that caused them. Otherwise a crash between a state write and a
  sink flush would make the redelivered events look like duplicates and their
  rows would never reach the sinks.
* Faust's RocksDB store picks a key's partition from the event being processed.
  Flushes happen outside any event, so each partition's writes are applied with
  an event of that partition set as the current event.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from faust.streams import _current_event  # private, but it is how Faust routes a key to its partition

_DELETED = object()


@contextmanager
def as_event(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class FaustTableStore:
    """A StateStore over a Faust table; `bind` the event before each engine call."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._event: Any = None
        self._pending: dict[int, dict[str, Any]] = {}
        self._events: dict[int, Any] = {}

    def bind(self, event: Any) -> None:
        """Keys touched from now on belong to this event's partition."""
        self._event = event

    def _partition(self) -> int:
        return self._event.message.partition

    def get(self, key: str) -> Any | None:
        pending = self._pending.get(self._partition())
        if pending is not None and key in pending:
            value = pending[key]
            return None if value is _DELETED else value
        with as_event(self._event):
            return self.table.get(key)

    def set(self, key: str, value: Any) -> None:
        p = self._partition()
        self._pending.setdefault(p, {})[key] = value
        self._events[p] = self._event

    def delete(self, key: str) -> None:
        p = self._partition()
        self._pending.setdefault(p, {})[key] = _DELETED
        self._events[p] = self._event

    @property
    def pending_writes(self) -> int:
        return sum(len(w) for w in self._pending.values())

    def flush(self) -> int:
        """Apply the buffered writes to the table (and so to RocksDB and the changelog)."""
        n = 0
        for p, writes in self._pending.items():
            with as_event(self._events[p]):
                for key, value in writes.items():
                    if value is _DELETED:
                        if key in self.table:
                            del self.table[key]
                    else:
                        self.table[key] = value
                    n += 1
        self.discard()
        return n

    def discard(self) -> None:
        self._pending.clear()
        self._events.clear()
