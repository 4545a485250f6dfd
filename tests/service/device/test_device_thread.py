"""The device thread runs calls one at a time, in order, and settles each caller's future."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.device.device_thread import DeviceThread


def test_calls_run_in_order_on_one_named_thread() -> None:
    device = DeviceThread("test-device")
    seen: list[tuple[int, str]] = []

    def work(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * i

    async def main() -> list[int]:
        return list(await asyncio.gather(*(device.run(work, i) for i in range(50))))

    try:
        assert asyncio.run(main()) == [i * i for i in range(50)]
    finally:
        device.close()
    assert seen == [(i, "test-device") for i in range(50)]


def test_an_exception_reaches_only_its_caller() -> None:
    device = DeviceThread()

    def work(i: int) -> int:
        if i == 1:
            raise ValueError("bad one")
        return i

    async def main() -> list[int | BaseException]:
        futures = [device.run(work, i) for i in range(3)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    try:
        first, second, third = asyncio.run(main())
    finally:
        device.close()
    assert (first, third) == (0, 2)
    assert isinstance(second, ValueError) and str(second) == "bad one"


def test_a_call_cancelled_while_queued_is_skipped() -> None:
    device = DeviceThread()
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        blocker = device.run(release.wait, 5.0)
        skipped = device.run(ran.append, "skipped")
        skipped.cancel()  # still queued behind the blocker
        release.set()
        assert await blocker is True
        await device.run(ran.append, "after")
        with pytest.raises(asyncio.CancelledError):
            await skipped

    try:
        asyncio.run(main())
    finally:
        device.close()
    assert ran == ["after"]


def test_close_finishes_queued_calls_then_refuses_new_ones() -> None:
    device = DeviceThread()
    done: list[int] = []

    async def main() -> None:
        for i in range(3):
            device.run(done.append, i)
        await asyncio.sleep(0)

    asyncio.run(main())
    device.close()
    assert done == [0, 1, 2]

    async def late() -> None:
        device.run(done.append, 3)

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(late())
    device.close()  # idempotent
