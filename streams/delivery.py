"""Delivery of fetched records to the agent: without a task per record (app.py's consumer), and straight
into an inbox the agent takes whole batches from (app.py's conductor)."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Coroutine, Generator

from mode.services import WaitResults


async def wait_first_eagerly(wait_first: Any, *coros: Any, timeout: Any = None) -> WaitResults:
    """`Service.wait_first`, running the first coroutine inline until it first suspends.

    Almost always it finishes without suspending (Faust's on_message with room in the stream's queue); then
    it won, and the others were never started. Only if it suspends does it go on, as a task, racing the
    others in `wait_first` as before (e.g. a full queue against a rebalance suspending the flow).

    Until it first suspends, the first coroutine runs in the caller's task: `asyncio.current_task()`,
    `asyncio.timeout()` and context variables it sets belong to the caller. Faust's `on_message` uses none of
    them; other coroutines passed here must not either."""
    if timeout is None and coros and asyncio.iscoroutine(coros[0]):
        first, others = coros[0], coros[1:]
        try:
            yielded = first.send(None)
        except BaseException as exc:
            for other in others:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: closing it only avoids a "never awaited" warning
            if isinstance(exc, StopIteration):
                return WaitResults([first], [exc.value], False)
            raise
        coros = (_Resumed(first, yielded), *others)
    return await wait_first(*coros, timeout=timeout)


class _Resumed:
    """Awaitable that drives a coroutine already started by hand from where it suspended (`yielded`, what its
    first step yielded to the event loop): what the task awaiting this sends or throws goes to the coroutine."""

    def __init__(self, coro: Coroutine, yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # incl. CancelledError: the coroutine decides what it means
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


class RecordInbox:
    """Fetched records of some topics, handed from Faust's fetch loop to one agent in whole batches.

    For its topics it replaces Faust's per-record delivery: an Event decoded per record, a queue per channel,
    and the stream's per-record iteration (a loop turn, sensors, processors and context variables per record),
    then acks through Event reference counts. That was about a fifth of the worker's time on a backlog
    (docs/benchmarks.md). The agent takes the Faust `Message`s as they are and acks them itself
    (`Consumer.ack`), so commits work as before.

    Bounded the way Faust bounds a stream's queue under pressure: a record arriving at a full inbox is still
    taken, and its partition stops being fetched (`Consumer.on_buffer_full`) until the inbox is down to half
    (`on_buffer_drop`). The fetch loop itself never waits here: a loop held mid-batch sets Faust's read offset
    after any seek made meanwhile, and Faust then drops the records re-fetched below it. So the inbox can
    exceed its size by the rest of one fetched batch. A rebalance's flow suspension holds delivery
    (`acquire_flow_control`), as Faust's conductor does.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 2:
            raise ValueError(f"inbox maxsize must be at least 2, got {maxsize}")
        self.maxsize = maxsize
        self._records: deque = deque()
        self._arrived = asyncio.Event()
        self._paused: dict[Any, Callable[[Any], None]] = {}  # partition -> its resume callback

    def __len__(self) -> int:
        return len(self._records)

    @property
    def paused(self) -> set:
        """Partitions not fetched until the inbox is down to half its size."""
        return set(self._paused)

    def handler(self, tp: Any, acquire_flow_control: Callable[[], Awaitable[None]],
                on_full: Callable[[Any], None], on_drop: Callable[[Any], None]) -> Callable[[Any], Awaitable[None]]:
        """The fetch loop's per-record callback for partition `tp` (Faust's conductor builds one per partition).
        on_full / on_drop: stop and resume fetching `tp` (Faust's Consumer.on_buffer_full / on_buffer_drop)."""
        records, arrived, paused = self._records, self._arrived, self._paused
        maxsize = self.maxsize

        async def on_message(message: Any) -> None:
            await acquire_flow_control()  # blocks while a rebalance has the flow suspended
            records.append(message)
            if len(records) >= maxsize and tp not in paused:
                paused[tp] = on_drop
                on_full(tp)
            if not arrived.is_set():
                arrived.set()

        return on_message

    async def take(self, max_records: int) -> list:
        """Wait until a record is there, then return up to max_records of them in arrival order."""
        records = self._records
        while not records:
            self._arrived.clear()
            await self._arrived.wait()
        n = min(max_records, len(records))
        batch = [records.popleft() for _ in range(n)]
        paused = self._paused
        if paused and len(records) <= self.maxsize // 2:
            resumes = list(paused.items())
            paused.clear()  # in place: the handlers hold this dict
            for tp, on_drop in resumes:
                on_drop(tp)
        return batch

    def clear(self) -> int:
        """Drop everything waiting (a revocation: the records are redelivered from the committed offsets). Paused
        partitions are forgotten, not resumed: the new assignment makes Faust's set of fetched partitions anew."""
        n = len(self._records)
        self._records.clear()
        self._paused.clear()  # in place: the handlers hold this dict
        return n
