"""Delivery of fetched records to the stream without a task per record (used by app.py's consumer)."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Generator

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
