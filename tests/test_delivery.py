"""streams/delivery.py: Faust's per-record wait_first, with the record's callback run inline first."""
from __future__ import annotations

import asyncio
import inspect
from typing import Awaitable, Callable

import pytest
from mode import Service

from streams.delivery import wait_first_eagerly


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
