"""Idempotent micro-batch object sinks keyed by Kafka (topic, partition, offset range).

Delivery is at-least-once, so after a crash some records are processed again. Each
flush writes its objects, named by the offset range they hold, and then a watermark
marker recording the last offset that flush covered. On (re)start, a partition's
objects past its watermark (from a flush that crashed midway) are deleted, and
records at or below the watermark are skipped: the lake ends with neither gaps
nor duplicates, however often a batch is retried.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sinks.lake import Lake

log = logging.getLogger(__name__)

OBJECT_NAME = re.compile(r"(?P<topic>[A-Za-z0-9_.\-]+?)-p(?P<partition>\d+)-o(?P<first>\d+)-(?P<last>\d+)\.\w+$")

TopicPartition = tuple[str, int]


def tp_key(topic: str, partition: int) -> str:
    """'topic-pNNN': how object names, watermarks and replay manifests name a topic-partition."""
    return f"{topic}-p{partition:03d}"


def parse_tp_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition("-p")
    return topic, int(partition)


def object_name(topic: str, partition: int, first: int, last: int, ext: str) -> str:
    return f"{tp_key(topic, partition)}-o{first:012d}-{last:012d}.{ext}"


@dataclass
class _Pending:
    rows: dict[str, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))  # dir -> (offset, row)
    last_offset: int = -1


@dataclass
class FlushStats:
    objects: int = 0
    rows: int = 0
    seconds: float = 0.0


_POOL = ThreadPoolExecutor(8, thread_name_prefix="lake")  # object stores reward parallel PUTs


@dataclass
class SealedBatch:
    """Rows taken out of a sink, with the watermarks to record once they are written."""

    sink: "OffsetTrackedSink"
    objects: list[tuple[str, list[Any]]]
    markers: list[tuple[TopicPartition, int]]

    def write(self) -> FlushStats:
        return write_batches([self])[0]


def write_batches(batches: list[SealedBatch]) -> list[FlushStats]:
    """Encode every batch's objects, write them in parallel; then, once all are stored, their watermarks."""
    t0 = time.perf_counter()
    # Encoded here, one object after another: encoding is mostly Python (holding the GIL), and parallel encoders
    # would take GIL turns from the worker's event loop. Only the PUTs, which release it, go in parallel.
    encoded = [(b.sink.lake, path, b.sink.encode(rows)) for b in batches for path, rows in b.objects]
    list(_POOL.map(lambda job: job[0].put(job[1], job[2]), encoded))
    marks = [(b.sink, tp, offset) for b in batches for tp, offset in b.markers]
    list(_POOL.map(lambda m: m[0].lake.put(m[0]._marker(m[1]), str(m[2]).encode()), marks))
    for sink, tp, offset in marks:
        sink._watermarks[tp] = max(sink._watermarks.get(tp, -1), offset)
    seconds = time.perf_counter() - t0
    return [FlushStats(len(b.objects), sum(len(rows) for _, rows in b.objects), seconds) for b in batches]


class OffsetTrackedSink:
    """Buffers rows per source partition; `flush` writes one object per (partition, directory)."""

    def __init__(self, lake: Lake, name: str, prefix: str, ext: str,
                 encode: Callable[[list[Any]], bytes]) -> None:
        self.lake = lake
        self.name = name  # e.g. "bronze", used for the watermark location
        self.prefix = prefix.rstrip("/")
        self.ext = ext
        self.encode = encode
        self._watermarks: dict[TopicPartition, int] = {}
        self._pending: dict[TopicPartition, _Pending] = {}
        self._recovering = threading.Lock()
        self.buffered_rows = 0

    def _marker(self, tp: TopicPartition) -> str:
        return f"_watermarks/{self.name}/{tp_key(*tp)}"

    def watermark(self, tp: TopicPartition) -> int:
        """Last offset of tp this sink holds; recovers (and removes orphans) on first use."""
        wm = self._watermarks.get(tp)
        if wm is None:
            wm = self._recover(tp)
            self._watermarks[tp] = wm
        return wm

    def _recover(self, tp: TopicPartition) -> int:
        self.recover([tp])
        return self._watermarks[tp]

    def recover(self, tps: Iterable[TopicPartition]) -> None:
        """Read the watermarks of tps and delete their objects past them (left by a flush cut short).

        One listing of the sink's prefix serves every partition: run it for a whole assignment at once,
        off the event loop.
        """
        with self._recovering:  # the assignment's recovery (a thread) and a first record's may overlap
            self._recover_locked(set(tps))

    def _recover_locked(self, todo: set[TopicPartition]) -> None:
        todo = {tp for tp in todo if tp not in self._watermarks}
        if not todo:
            return
        marks = {}
        for tp in todo:
            try:
                marks[tp] = int(self.lake.get(self._marker(tp)).decode())
            except FileNotFoundError:
                marks[tp] = -1
        for obj in self.lake.list(self.prefix):
            m = OBJECT_NAME.search(obj.path)
            if m is None:
                continue
            wm = marks.get((m["topic"], int(m["partition"])))
            if wm is not None and int(m["first"]) > wm:
                log.warning("%s: removing %s, written past watermark %d by an interrupted flush",
                            self.name, obj.path, wm)
                try:
                    self.lake.delete(obj.path)
                except FileNotFoundError:  # removed meanwhile (by another recovery): the same outcome
                    pass
        self._watermarks.update(marks)

    def accepts(self, topic: str, partition: int, offset: int) -> bool:
        """False for a record this sink already holds (a redelivery after a crash)."""
        return offset > self.watermark((topic, partition))

    def add(self, topic: str, partition: int, offset: int, directory: str, row: Any) -> None:
        pending = self._pending_for(topic, partition)
        pending.rows[directory].append((offset, row))
        if offset > pending.last_offset:
            pending.last_offset = offset
        self.buffered_rows += 1

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """Record that offset was processed, even if it produced no row for this sink."""
        pending = self._pending_for(topic, partition)
        if offset > pending.last_offset:
            pending.last_offset = offset

    def _pending_for(self, topic: str, partition: int) -> _Pending:
        # Not setdefault(tp, _Pending()): that builds a _Pending (and its dict) per call, several per event.
        pending = self._pending.get((topic, partition))
        if pending is None:
            pending = self._pending[(topic, partition)] = _Pending()
        return pending

    def seal(self) -> "SealedBatch":
        """Take the buffered rows out (cheap); write them later with `write`, off the event loop."""
        objects, markers = [], []
        for tp, pending in sorted(self._pending.items()):
            if pending.last_offset <= self.watermark(tp):
                continue
            for directory, rows in sorted(pending.rows.items()):
                first, last = min(o for o, _ in rows), max(o for o, _ in rows)
                path = f"{self.prefix}/{directory}/{object_name(tp[0], tp[1], first, last, self.ext)}"
                objects.append((path, [r for _, r in rows]))
            markers.append((tp, pending.last_offset))
        self._pending = {}
        self.buffered_rows = 0
        return SealedBatch(self, objects, markers)

    def seal_batches(self) -> list["SealedBatch"]:
        """`seal`, as the list every sink of the pipeline returns (a composite sink seals several)."""
        return [self.seal()]

    def flush(self) -> FlushStats:
        return self.seal().write()

    def forget(self, tps: set[TopicPartition]) -> None:
        """Drop cached watermarks of revoked partitions (another worker may advance them)."""
        for tp in tps:
            self._watermarks.pop(tp, None)
