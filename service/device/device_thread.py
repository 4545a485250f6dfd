"""The one thread that talks to the device, handing each result back to the event loop directly.

``loop.run_in_executor`` on a one-worker ``ThreadPoolExecutor`` would do the same job, but every
call goes through a ``concurrent.futures.Future``, its lock and condition, and a chained asyncio
future; on the benchmark machine that hand-off costs the event loop ≈ 50 µs of CPU per call, as
much as a small batch's whole device time. Here a call is one ``SimpleQueue.put`` from the loop
and one ``call_soon_threadsafe`` back, which settles the asyncio future in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

_STOP = object()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller stopped waiting; the work was done regardless
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class DeviceThread:
    """Runs functions one at a time, in order, on a single named daemon thread."""

    def __init__(self, name: str = "topk-device") -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is _STOP:
                return
            loop, future, function, args = call
            if future.cancelled():
                continue
            try:
                result, error = function(*args), None
            except BaseException as raised:  # noqa: BLE001 — handed to the waiting caller
                result, error = None, raised
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, result, error)
            del call, loop, future, function, args, result, error  # nothing outlives its call

    def run(self, function: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        """Queue ``function(*args)``; the future of its result, settled on the calling loop."""
        if self._closed:
            raise RuntimeError("the device thread is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def close(self) -> None:
        """Let queued calls finish, then stop the thread and wait for it."""
        if not self._closed:
            self._closed = True
            self._calls.put(_STOP)
        self._thread.join()
