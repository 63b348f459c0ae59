"""A deterministic order for records of several topics: merge by Kafka timestamp.

Kafka orders records only within a partition, and a worker reads the clinical.*
topics in whatever interleaving its fetches produce. Features depend on the order
in which a patient's vitals, labs and doses are applied, so an arbitrary
interleaving would make live rows differ from replayed ones (and from a run
interrupted by a crash). Like Kafka Streams' `max.task.idle.ms`, records of the
same partition number of every topic (the same patients, as every topic is keyed
by patient_id) are merged by their heads: the smallest (timestamp, topic rank)
goes first. Live, a head is released once every topic has a record buffered, or
once the empty topics are caught up and the head has waited `grace_ms`, or once the
partition's merge has been blocked on an empty topic for `max_idle_ms` regardless.
Optionally (fetch stamps given), also once the empty topics are caught up as of a
fetch response no older than the one that delivered the head. Replay, with all
records at hand, calls `merge_order`, the same rule without waiting.
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from agents.pipeline import RawRecord
from streams import topics

# Topics whose order matters to the features. Ties at the same timestamp: context first (enrolment, labs,
# doses), then the vitals they inform. Adverse events are labels; they need no place in this order.
MERGE_RANK: dict[str, int] = {topics.PATIENTS: 0, topics.LABS: 1, topics.MEDICATIONS: 2, topics.VITALS: 3}


def _key(rec: RawRecord) -> tuple[int, int]:
    return rec.timestamp_ms, MERGE_RANK[rec.topic]


def merge_order(per_topic: Iterable[Iterable[RawRecord]]) -> Iterator[RawRecord]:
    """Merge offset-ordered record streams of one partition number by their heads."""
    return heapq.merge(*per_topic, key=_key)


class TimestampMerge:
    """The live side of `merge_order`: buffers records and releases them in the same order."""

    def __init__(self, grace_ms: int = 50, max_idle_ms: int = 5_000) -> None:
        self.grace_ms = grace_ms
        self.max_idle_ms = max_idle_ms
        # partition -> topic -> FIFO of (record, handle, received_ms, fetched_ms)
        self._fifos: dict[int, dict[str, deque[tuple[RawRecord, Any, float, float]]]] = {}
        # partition -> since when its merge has waited on a lagging (empty, not caught up) topic; cleared when
        # no topic lags. Max idle counts from here, like Kafka Streams' max.task.idle.ms, not from when the head
        # record arrived: a record buffered long during a catch-up must still wait for a topic that just ran empty.
        # Times are monotonic milliseconds.
        self._blocked_since: dict[int, float] = {}

    def add(self, rec: RawRecord, handle: Any, received_ms: float, fetched_ms: float = float("inf")) -> None:
        """Buffer a record. received_ms: monotonic time of its delivery (for the grace). fetched_ms: when the
        fetch response that delivered it, or a later one of its partition, was processed, on the clock of
        `release`'s fetched_at (infinity if unknown: the record then waits out the grace)."""
        fifos = self._fifos.get(rec.partition)
        if fifos is None:
            fifos = self._fifos[rec.partition] = {t: deque() for t in MERGE_RANK}
        fifos[rec.topic].append((rec, handle, received_ms, fetched_ms))

    @property
    def buffered(self) -> int:
        return sum(len(q) for fifos in self._fifos.values() for q in fifos.values())

    def release(self, now_ms: float, caught_up: Callable[[str, int], bool],
                fetched_at: Callable[[str, int], float | None] | None = None) -> list[tuple[RawRecord, Any]]:
        """Every record that may go now, in merge order. caught_up(topic, partition): nothing more to fetch.
        fetched_at(topic, partition): when the fetch response that last reported its highwater was processed
        (None if unknown); without it (the default configuration, see VITALSTREAM_MERGE_FRESH_HIGHWATERS),
        records of a partition with an empty topic wait out the grace."""
        out: list[tuple[RawRecord, Any]] = []
        known: dict[tuple[str, int], bool] = {}
        stamps: dict[tuple[str, int], float] = {}

        def all_caught_up(empty: list[str], partition: int) -> bool:
            # An empty topic stays empty during one release: ask the consumer once per topic-partition.
            for t in empty:
                done = known.get((t, partition))
                if done is None:
                    done = known[(t, partition)] = caught_up(t, partition)
                if not done:
                    return False
            return True

        def freshness(empty: list[str], partition: int) -> float:
            """The oldest fetch of the empty topics' highwaters: records delivered by a fetch no newer may go."""
            if fetched_at is None:
                return float("-inf")
            oldest = float("inf")
            for t in empty:
                stamp = stamps.get((t, partition))
                if stamp is None:
                    got = fetched_at(t, partition)
                    stamp = stamps[(t, partition)] = float("-inf") if got is None else got
                oldest = min(oldest, stamp)
            return oldest

        for partition, fifos in self._fifos.items():
            while True:
                filled = [q for q in fifos.values() if q]
                if not filled:
                    self._blocked_since.pop(partition, None)
                    break
                empty = [t for t, q in fifos.items() if not q]
                # The stamps before the highwaters: aiokafka's consumer thread sets a partition's highwater, then
                # its stamp. Read the other way round, a response landing in between would pair an old highwater
                # with a new stamp.
                fresh = freshness(empty, partition) if empty else float("inf")
                if empty and not all_caught_up(empty, partition):
                    # Waiting on a lagging topic. The clock runs until it delivers or catches up, not per
                    # record: once past max idle, the partition flows instead of one record per max idle.
                    if now_ms - self._blocked_since.setdefault(partition, now_ms) < self.max_idle_ms:
                        break
                    waited = True
                else:
                    self._blocked_since.pop(partition, None)
                    waited = False
                # The empty topics are caught up (or waited out). With fetch stamps, a head may go at once if their
                # highwaters came from a fetch response no older than the one that delivered it: the broker read
                # them after the head was written, so a record of theirs written before it would have been
                # delivered. A topic left out of the fetch in flight (it still had records buffered) has an older
                # highwater; the head then waits for its next fetch, or at most the grace.
                if waited:
                    fresh = float("inf")
                if len(filled) == 1:
                    # One topic holds records (the common case): its FIFO goes in order, the same decision
                    # for each record as below, without re-deciding per record.
                    q = filled[0]
                    while q and (waited or not empty or q[0][3] <= fresh or now_ms - q[0][2] >= self.grace_ms):
                        rec, handle, _, _ = q.popleft()
                        out.append((rec, handle))
                    if q:
                        break
                    continue
                rec, handle, received, fetched = min((q[0] for q in filled), key=lambda h: _key(h[0]))
                if not waited and empty and fetched > fresh and now_ms - received < self.grace_ms:
                    break
                fifos[rec.topic].popleft()
                out.append((rec, handle))
        return out

    def clear(self) -> None:
        self._fifos.clear()
        self._blocked_since.clear()
