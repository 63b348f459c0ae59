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


def _inbox(maxsize: int) -> tuple[RecordInbox, FlowControlEvent, Callable]:
    flow = FlowControlEvent()
    flow.resume()  # as Faust's app while partitions are assigned
    inbox = RecordInbox(maxsize)
    return inbox, flow, inbox.handler(flow.acquire)


def test_inbox_hands_records_over_in_arrival_order_in_bounded_batches() -> None:
    async def main() -> None:
        inbox, _, on_message = _inbox(100)
        taker = asyncio.create_task(inbox.take(4))
        await asyncio.sleep(0)
        assert not taker.done()  # nothing there yet: take waits
        for i in range(10):
            await on_message(i)
        assert await asyncio.wait_for(taker, 5) == [0, 1, 2, 3]
        assert await inbox.take(4) == [4, 5, 6, 7]
        assert await inbox.take(4) == [8, 9]
        assert len(inbox) == 0

    asyncio.run(main())


def test_full_inbox_holds_the_fetch_loop_until_the_agent_takes() -> None:
    async def main(service: Service) -> None:
        inbox, _, on_message = _inbox(3)
        for i in range(3):
            assert (await wait_first_eagerly(service.wait_first, on_message(i), asyncio.Event().wait())).results
        # Full: the fetch loop's delivery of the next record suspends, and resumes once there is room.
        delivery = asyncio.create_task(wait_first_eagerly(service.wait_first, on_message(3), asyncio.Event().wait()))
        await asyncio.sleep(0.01)
        assert not delivery.done() and len(inbox) == 3
        assert await inbox.take(2) == [0, 1]
        await asyncio.wait_for(delivery, 5)
        assert await inbox.take(10) == [2, 3]  # nothing lost, order kept

    _with_service(main)


def test_rebalance_suspending_the_flow_interrupts_a_full_inbox_and_clear_drops_what_waits() -> None:
    async def main(service: Service) -> None:
        inbox, flow, on_message = _inbox(2)
        await on_message("a")
        await on_message("b")
        suspend_flow = asyncio.Event()
        delivery = asyncio.create_task(wait_first_eagerly(service.wait_first, on_message("c"), suspend_flow.wait()))
        await asyncio.sleep(0.01)
        flow.suspend()
        suspend_flow.set()  # Faust's consumer.stop_flow(): the fetch loop stops waiting on the full inbox
        await asyncio.wait_for(delivery, 5)
        assert inbox.clear() == 2  # the revocation drops the records fetched before it
        assert len(inbox) == 0
        # While the flow is suspended, delivery waits; it goes on once the flow resumes.
        held = asyncio.create_task(on_message("d"))
        await asyncio.sleep(0.01)
        assert not held.done()
        flow.resume()
        await asyncio.wait_for(held, 5)
        assert await inbox.take(10) == ["d"]  # "c" was never delivered: it is fetched again from the commit

    _with_service(main)


def test_inbox_needs_room_for_a_record() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecordInbox(0)
