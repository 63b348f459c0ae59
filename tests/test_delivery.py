"""streams/delivery.py: Faust's per-record wait_first, with the record's callback run inline first; the inbox
that hands fetched records to the agent in batches."""
from __future__ import annotations

import asyncio
import inspect
from typing import Awaitable, Callable

import pytest
from mode import Service
from mode.utils.queues import FlowControlEvent

from streams.delivery import RecordInbox, wait_first_eagerly


def _with_service(test: Callable[[Service], Awaitable[None]]) -> None:
    """Run `test` on a fresh event loop with a started mode Service (whose wait_first is wrapped)."""
    async def main() -> None:
        service = Service()
        await service.start()
        try:
            await test(service)
        finally:
            await service.stop()

    asyncio.run(main())


def test_callback_that_does_not_suspend_wins_without_starting_the_others() -> None:
    async def main(service: Service) -> None:
        delivered, waited = [], []

        async def on_message() -> str:
            delivered.append(1)
            return "done"

        async def suspend_flow() -> None:
            waited.append(1)
            await asyncio.Event().wait()

        other = suspend_flow()
        result = await wait_first_eagerly(service.wait_first, on_message(), other)
        assert (result.results, result.stopped, delivered, waited) == (["done"], False, [1], [])
        # never started, and closed (not left to warn "never awaited"); no task was left behind for it
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED
        assert asyncio.all_tasks() == {asyncio.current_task()} | set(service._futures)

    _with_service(main)


def test_callback_that_suspends_goes_on_as_a_task_until_it_finishes() -> None:
    async def main(service: Service) -> None:
        gate = asyncio.get_running_loop().create_future()
        steps = []

        async def on_message() -> int:
            steps.append("start")
            await asyncio.sleep(0)  # a bare yield to the loop
            value = await gate  # a real suspension on a future
            steps.append("end")
            return value

        waiter = asyncio.create_task(wait_first_eagerly(service.wait_first, on_message(), asyncio.Event().wait()))
        await asyncio.sleep(0.01)
        assert steps == ["start"] and not waiter.done()
        gate.set_result(7)
        result = await asyncio.wait_for(waiter, 5)
        assert (result.results, steps) == ([7], ["start", "end"])

    _with_service(main)


def test_suspended_callback_is_cancelled_when_the_other_awaitable_wins() -> None:
    async def main(service: Service) -> None:
        suspend = asyncio.Event()
        cleaned_up = []

        async def on_message() -> None:
            try:
                await asyncio.Event().wait()  # a full queue that never drains
            finally:
                cleaned_up.append(True)

        waiter = asyncio.create_task(wait_first_eagerly(service.wait_first, on_message(), suspend.wait()))
        await asyncio.sleep(0.01)
        suspend.set()  # e.g. a rebalance suspending the flow
        result = await asyncio.wait_for(waiter, 5)
        assert result.results == [True] and cleaned_up == [True]

    _with_service(main)


def test_errors_of_the_callback_propagate_whether_or_not_it_suspended() -> None:
    async def main(service: Service) -> None:

        async def fails_at_once() -> None:
            raise ValueError("bad record")

        async def fails_later() -> None:
            await asyncio.sleep(0)
            raise KeyError("later")

        with pytest.raises(ValueError, match="bad record"):
            await wait_first_eagerly(service.wait_first, fails_at_once(), asyncio.Event().wait())
        with pytest.raises(KeyError, match="later"):
            await wait_first_eagerly(service.wait_first, fails_later(), asyncio.Event().wait())

    _with_service(main)


def test_callback_suspended_on_a_future_gets_its_result_or_its_exception() -> None:
    async def main(service: Service) -> None:
        loop = asyncio.get_running_loop()

        async def on_message(gate: asyncio.Future) -> str:
            return await gate  # the first thing it yields is the future itself

        ok, failing = loop.create_future(), loop.create_future()
        waiters = [asyncio.create_task(wait_first_eagerly(service.wait_first, on_message(f), asyncio.Event().wait()))
                   for f in (ok, failing)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        ok.set_result("value")
        failing.set_exception(LookupError("broker gone"))
        assert (await asyncio.wait_for(waiters[0], 5)).results == ["value"]
        with pytest.raises(LookupError, match="broker gone"):
            await asyncio.wait_for(waiters[1], 5)

    _with_service(main)


def test_cancelling_the_waiter_cancels_a_suspended_callback() -> None:
    async def main(service: Service) -> None:
        cancelled = []

        async def on_message() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        waiter = asyncio.create_task(wait_first_eagerly(service.wait_first, on_message(), asyncio.Event().wait()))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0)
        assert cancelled == [True]

    _with_service(main)


class _Fetching:
    """The consumer's set of fetched partitions, as Faust's on_buffer_full / on_buffer_drop change it."""

    def __init__(self, *tps: str) -> None:
        self.active = set(tps)

    def on_full(self, tp: str) -> None:
        self.active.discard(tp)

    def on_drop(self, tp: str) -> None:
        self.active.add(tp)


def _inbox(maxsize: int, *tps: str) -> tuple[RecordInbox, FlowControlEvent, _Fetching, dict[str, Callable]]:
    flow = FlowControlEvent()
    flow.resume()  # as Faust's app while partitions are assigned
    fetching = _Fetching(*tps)
    inbox = RecordInbox(maxsize)
    handlers = {tp: inbox.handler(tp, flow.acquire, fetching.on_full, fetching.on_drop) for tp in tps}
    return inbox, flow, fetching, handlers


def test_inbox_hands_records_over_in_arrival_order_in_bounded_batches() -> None:
    async def main() -> None:
        inbox, _, _, on = _inbox(100, "a", "b")
        taker = asyncio.create_task(inbox.take(4))
        await asyncio.sleep(0)
        assert not taker.done()  # nothing there yet: take waits
        for i in range(10):
            await on["a" if i % 2 else "b"](i)
        assert await asyncio.wait_for(taker, 5) == [0, 1, 2, 3]
        assert await inbox.take(4) == [4, 5, 6, 7]
        assert await inbox.take(4) == [8, 9]
        assert len(inbox) == 0

    asyncio.run(main())


def test_full_inbox_stops_fetching_the_partition_without_holding_the_fetch_loop() -> None:
    async def main(service: Service) -> None:
        inbox, _, fetching, on = _inbox(4, "a", "b")
        for i in range(3):
            assert (await wait_first_eagerly(service.wait_first, on["a"](i), asyncio.Event().wait())).results
        assert fetching.active == {"a", "b"} and not inbox.paused
        # The record that fills the inbox is taken, and its partition is no longer fetched; the fetch loop's
        # delivery of the rest of its batch never waits (a held loop would undo seeks made meanwhile).
        for i in range(3, 6):
            assert (await wait_first_eagerly(service.wait_first, on["a"](i), asyncio.Event().wait())).results
        await on["b"](6)
        assert fetching.active == set() and inbox.paused == {"a", "b"} and len(inbox) == 7
        assert await inbox.take(4) == [0, 1, 2, 3]
        assert fetching.active == set()  # 3 left: more than half of 4
        assert await inbox.take(1) == [4]
        assert fetching.active == {"a", "b"} and not inbox.paused  # down to half: fetched again
        assert await inbox.take(10) == [5, 6]  # nothing lost, order kept
        # Again, after a resume: the same partition is paused again, and one paused for the first time is
        # resumed too.
        for i in range(4):
            await on["b"](10 + i)
        await on["a"](14)
        assert fetching.active == set() and inbox.paused == {"a", "b"}
        assert await inbox.take(10) == [10, 11, 12, 13, 14]
        assert fetching.active == {"a", "b"} and not inbox.paused

    _with_service(main)


def test_rebalance_holds_delivery_while_the_flow_is_suspended_and_clear_drops_what_waits() -> None:
    async def main() -> None:
        inbox, flow, fetching, on = _inbox(2, "a")
        await on["a"]("x")
        await on["a"]("y")
        assert inbox.paused == {"a"}
        flow.suspend()  # the revocation: Faust suspends the flow, then the agent empties the inbox
        assert inbox.clear() == 2
        assert len(inbox) == 0 and not inbox.paused
        assert fetching.active == set()  # not resumed by the inbox: the new assignment sets what is fetched
        held = asyncio.create_task(on["a"]("z"))
        await asyncio.sleep(0.01)
        assert not held.done() and len(inbox) == 0  # delivery waits while the flow is suspended
        flow.resume()
        await asyncio.wait_for(held, 5)
        assert await inbox.take(10) == ["z"]

    asyncio.run(main())


def test_inbox_needs_room_for_records() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        RecordInbox(1)
