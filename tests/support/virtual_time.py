"""An asyncio event loop on a virtual clock, for testing timing logic without sleeping.

Whenever the loop has nothing ready to run, its clock jumps straight to the next scheduled timer (trio's
``MockClock(autojump_threshold=0)``; the ``looptime`` plugin does the same for asyncio). A wait of seconds takes no
wall time, and *when* each thing happens is exact and the same on an idle laptop and a loaded CI machine.

Work must stay on the loop's thread, or it would race the jumps: :class:`InlineExecutor` runs an executor's work
at once, inside ``submit``, and code standing in for slow work moves the clock forward itself
(:meth:`VirtualClock.advance`). A loop left with nothing scheduled and nothing ready would wait forever; here it
raises instead, so a deadlock fails the test at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClock:
    """Seconds since the start of the test; moves only when the loop jumps or :meth:`advance` is called."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (work that takes time, run inline)."""
        if seconds < 0:
            raise ValueError(f"expected seconds >= 0, got {seconds}")
        self.now += seconds


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would block until its next timer, moves the clock there instead."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing is ready, the loop would wait forever")
        self._clock.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is ``clock``, jumping from timer to timer."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        super().__init__(_JumpingSelector(clock))

    def time(self) -> float:
        return self.clock()


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, on the caller's thread, and returns its finished future."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting coroutine, as a thread pool would
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


def run_in_virtual_time(main: Coroutine[Any, Any, T], clock: VirtualClock) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop` over ``clock``, then close the loop."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
