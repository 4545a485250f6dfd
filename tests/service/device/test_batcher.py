"""The batcher alone, in plain asyncio (no JAX, no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.device.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull


class Recorder:
    """A batch function that records its batches and answers ``item * 10`` (or an error)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.delay = delay

    async def __call__(self, key: str, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append((key, list(items)))
        await asyncio.sleep(self.delay)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def make(recorder: Recorder, **options: object) -> Batcher[str, int, int]:
    settings: dict[str, object] = {"max_batch_rows": 8, "max_delay": 0.05, "max_queued": 100}
    settings.update(options)
    return Batcher(recorder, **settings)  # type: ignore[arg-type]


def test_a_single_request_runs_alone_after_the_delay() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder, max_delay=0.02)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit("a", 3) == 30
        assert loop.time() - started >= 0.015
        assert recorder.batches == [("a", [3])]
        await batcher.close()

    asyncio.run(main())


def test_concurrent_requests_with_one_key_share_a_batch_and_keep_their_results() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit("a", i) for i in range(5)))
        assert results == [0, 10, 20, 30, 40]
        assert recorder.batches == [("a", [0, 1, 2, 3, 4])]
        await batcher.close()

    asyncio.run(main())


def test_a_full_row_budget_sends_at_once_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder, max_delay=10.0, max_batch_rows=4)
        batcher.start()
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit("a", i, rows=2) for i in range(4))), timeout=2
        )
        assert results == [0, 10, 20, 30]
        assert [items for _, items in recorder.batches] == [[0, 1], [2, 3]]
        await batcher.close()

    asyncio.run(main())


def test_keys_never_mix() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder)
        batcher.start()
        await asyncio.gather(*(batcher.submit("ab"[i % 2], i) for i in range(6)))
        assert sorted(recorder.batches) == [("a", [0, 2, 4]), ("b", [1, 3, 5])]
        await batcher.close()

    asyncio.run(main())


def test_one_bad_item_fails_alone() -> None:
    async def main() -> None:
        batcher = make(Recorder())
        batcher.start()
        results = await asyncio.gather(
            batcher.submit("a", 1), batcher.submit("a", -1), batcher.submit("a", 2),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] == 10
        assert results[2] == 20
        assert isinstance(results[1], ValueError)
        await batcher.close()

    asyncio.run(main())


def test_a_failing_batch_function_fails_every_item_of_that_batch_only() -> None:
    async def broken(key: str, items: list[int]) -> Sequence[int | BaseException]:
        if key == "broken":
            raise RuntimeError("device lost")
        return list(items)

    async def main() -> None:
        batcher: Batcher[str, int, int] = Batcher(
            broken, max_batch_rows=8, max_delay=0.01, max_queued=10
        )
        batcher.start()
        results = await asyncio.gather(
            batcher.submit("broken", 1), batcher.submit("broken", 2), batcher.submit("fine", 3),
            return_exceptions=True,
        )  # fmt: skip
        assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]
        assert results[2] == 3
        await batcher.close()

    asyncio.run(main())


def test_a_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        batcher = make(Recorder(), max_delay=10.0, max_queued=2, max_batch_rows=100)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit("a", i)) for i in range(2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFull):
            await batcher.submit("a", 9)
        await batcher.close(drain=True)  # draining sends the queued ones without the delay
        assert [await w for w in waiting] == [0, 10]

    asyncio.run(main())


def test_without_batching_every_request_is_its_own_batch() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder, batching=False, max_delay=10.0)
        batcher.start()
        assert await asyncio.gather(*(batcher.submit("a", i) for i in range(3))) == [0, 10, 20]
        assert [items for _, items in recorder.batches] == [[0], [1], [2]]
        await batcher.close()

    asyncio.run(main())


def test_requests_queued_while_the_slots_are_busy_go_together() -> None:
    async def main() -> None:
        recorder = Recorder(delay=0.05)
        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a", 0))
        await asyncio.sleep(0.01)  # the first batch is running now
        rest = await asyncio.gather(*(batcher.submit("a", i) for i in range(1, 4)))
        assert await first == 0
        assert rest == [10, 20, 30]
        assert [items for _, items in recorder.batches] == [[0], [1, 2, 3]]
        await batcher.close()

    asyncio.run(main())


def test_a_second_slot_takes_a_partial_batch_of_its_key_only_when_full() -> None:
    """With two slots, a partial batch waits for the batch of its own key in flight (and keeps
    growing); a batch that fills its row budget goes at once, beside it."""

    async def main() -> None:
        recorder = Recorder(delay=0.05)
        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=2, max_batch_rows=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a", 0))
        await asyncio.sleep(0.01)  # the first batch is running now
        partial = [asyncio.ensure_future(batcher.submit("a", i)) for i in (1, 2)]
        await asyncio.sleep(0.02)
        assert len(recorder.batches) == 1, "a partial batch must wait for the one in flight"
        full = [asyncio.ensure_future(batcher.submit("b", 0, rows=2)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert [key for key, _ in recorder.batches] == ["a", "b"], "a full batch goes at once"
        partial.append(asyncio.ensure_future(batcher.submit("a", 3)))
        await asyncio.gather(first, *partial, *full)
        assert recorder.batches == [("a", [0]), ("b", [0, 0]), ("a", [1, 2, 3])]
        await batcher.close()

    asyncio.run(main())


def test_a_partial_batch_of_another_key_takes_the_second_slot() -> None:
    """A key never waits for another key's batch to end: big full batches must not keep a small
    key's partial batches off the device (the 169 req/s of issue 15)."""

    async def main() -> None:
        recorder = Recorder(delay=0.05)
        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=2, max_batch_rows=4)
        batcher.start()
        big = asyncio.ensure_future(batcher.submit("big", 1, rows=4))
        await asyncio.sleep(0.01)  # the big batch is running now
        small = asyncio.ensure_future(batcher.submit("small", 2))
        await asyncio.sleep(0.01)
        assert [key for key, _ in recorder.batches] == ["big", "small"]
        assert await asyncio.gather(big, small) == [10, 20]
        await batcher.close()

    asyncio.run(main())


def test_keys_share_the_slots_by_work_not_by_arrival() -> None:
    """Ten full batches of an expensive key are queued before a cheap key's requests arrive; the
    cheap key is the one served least, so each of its batches goes at the next free slot instead
    of after all ten (start-time fair queueing by cost)."""

    async def main() -> None:
        recorder = Recorder(delay=0.02)
        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=1, max_batch_rows=4)
        batcher.start()
        big = [
            asyncio.ensure_future(batcher.submit("big", i, rows=4, cost=4 * 1024))
            for i in range(10)
        ]
        await asyncio.sleep(0.005)  # the first big batch is running
        small = []
        for i in range(3):
            small.append(asyncio.ensure_future(batcher.submit("small", 100 + i, cost=64)))
            await small[-1]
        order = [key for key, _ in recorder.batches]
        assert order[:6] == ["big", "small", "big", "small", "big", "small"], order
        await asyncio.gather(*big)
        await batcher.close()

    asyncio.run(main())


def test_a_key_back_from_idle_does_not_claim_the_time_it_was_idle() -> None:
    """A key that was served little long ago starts level with the key being served, so it
    alternates with it instead of holding the device until it has caught up."""

    async def main() -> None:
        recorder = Recorder(delay=0.01)
        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=1, max_batch_rows=1)
        batcher.start()
        await batcher.submit("b", 0, cost=1)  # b has been served once, long ago
        for i in range(5):  # a alone for a while
            await batcher.submit("a", i, cost=1)
        recorder.batches.clear()
        both = [batcher.submit(key, i, cost=1) for i in range(3) for key in ("a", "b")]
        await asyncio.gather(*both)
        keys = [key for key, _ in recorder.batches]
        assert keys.count("a") == keys.count("b") == 3
        assert "bbb" not in "".join(keys), keys
        await batcher.close()

    asyncio.run(main())


def test_the_work_queued_per_key_is_bounded_but_other_keys_still_get_in() -> None:
    async def main() -> None:
        batcher = make(Recorder(), max_delay=10.0, max_queued=100, max_queued_cost=1000)
        batcher.start()
        queued = [asyncio.ensure_future(batcher.submit("big", i, cost=400)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="800 entries of work queued"):
            await batcher.submit("big", 9, cost=400)
        small = asyncio.ensure_future(batcher.submit("small", 1, cost=10))
        await asyncio.sleep(0)
        assert batcher.depth == 3, "a cheap request of another key is still queued"
        await batcher.close(drain=True)
        assert [await q for q in queued] == [0, 10]
        assert await small == 10

    asyncio.run(main())


def test_a_request_costing_more_than_the_bound_is_taken_when_its_key_is_empty() -> None:
    """Else the largest request the size limits allow could never run."""

    async def main() -> None:
        batcher = make(Recorder(), max_delay=0.0, max_queued_cost=100)
        batcher.start()
        assert await batcher.submit("big", 3, cost=10_000) == 30
        await batcher.close()

    asyncio.run(main())


def test_a_cancelled_request_is_dropped_before_dispatch() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder, max_delay=0.05)
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit("a", 1))
        kept = asyncio.ensure_future(batcher.submit("a", 2))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == 20
        assert recorder.batches == [("a", [2])]
        await batcher.close()

    asyncio.run(main())


def test_close_without_drain_fails_the_queued_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        batcher = make(Recorder(), max_delay=10.0)
        batcher.start()
        waiting = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0)
        await batcher.close(drain=False)
        with pytest.raises(BatcherClosed):
            await waiting
        with pytest.raises(BatcherClosed):
            await batcher.submit("a", 2)

    asyncio.run(main())


def test_a_batch_function_returning_the_wrong_count_fails_the_batch() -> None:
    async def short(key: str, items: list[int]) -> Sequence[int | BaseException]:
        return items[:-1]

    async def main() -> None:
        batcher: Batcher[str, int, int] = Batcher(
            short, max_batch_rows=8, max_delay=0.01, max_queued=9
        )
        batcher.start()
        results = await asyncio.gather(
            batcher.submit("a", 1), batcher.submit("a", 2), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        await batcher.close()

    asyncio.run(main())


def test_a_request_still_queued_at_its_deadline_fails_and_is_never_computed() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = make(recorder, max_delay=0.2)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        late = batcher.enqueue("a", 1, timeout=0.02)
        on_time = batcher.enqueue("a", 2, timeout=5.0)
        with pytest.raises(DeadlineExceeded):
            await late
        assert loop.time() - started < 0.15  # answered at its deadline, not at the batch's
        assert await on_time == 20
        assert recorder.batches == [("a", [2])]
        await batcher.close()

    asyncio.run(main())


def test_a_deadline_that_passes_during_the_computation_changes_nothing() -> None:
    async def main() -> None:
        recorder = Recorder(delay=0.05)
        batcher = make(recorder, max_delay=0.0)
        batcher.start()
        assert await batcher.submit("a", 4, timeout=0.01) == 40  # sent at once, computed in full
        await batcher.close()

    asyncio.run(main())


def test_a_batch_waiting_to_be_prepared_lets_other_keys_run() -> None:
    """A batch whose ``prepare`` hook hands back an awaitable (its kernel compiling) gives its slot
    back while it waits: another key's batches run meanwhile, its own key's later requests stay
    queued and then go as one batch; a failed preparation fails only that batch."""

    async def main() -> None:
        recorder = Recorder()
        compiles: dict[str, asyncio.Future[None]] = {}
        prepared: list[tuple[str, list[int]]] = []

        def prepare(key: str, items: list[int]) -> asyncio.Future[None] | None:
            prepared.append((key, list(items)))
            if key == "warm" or (key in compiles and compiles[key].done()):
                return None
            return compiles.setdefault(key, asyncio.get_running_loop().create_future())

        batcher = make(recorder, max_delay=0.0, max_concurrent_batches=1, prepare=prepare)
        batcher.start()
        cold = asyncio.ensure_future(batcher.submit("cold", 1))
        broken = asyncio.ensure_future(batcher.submit("broken", 2))
        await asyncio.sleep(0.01)
        assert set(compiles) == {"cold", "broken"}, "both waited, neither held the one slot"
        later = [asyncio.ensure_future(batcher.submit("cold", i)) for i in (3, 4)]
        for i in range(3):  # the one slot serves warm batches meanwhile, one after the other
            assert await batcher.submit("warm", i) == i * 10
        assert not cold.done() and recorder.batches == [("warm", [0]), ("warm", [1]), ("warm", [2])]
        assert [items for key, items in prepared if key == "cold"] == [[1]], "the rest waits"
        compiles["cold"].set_result(None)
        compiles["broken"].set_exception(RuntimeError("compile failed"))
        assert await cold == 10
        assert await asyncio.gather(*later) == [30, 40]
        assert ("cold", [3, 4]) in recorder.batches, "queued while compiling, sent together"
        with pytest.raises(RuntimeError, match="compile failed"):
            await broken
        assert ("broken", [2]) not in recorder.batches  # never computed
        assert await batcher.submit("warm", 5) == 50  # every slot is back
        await batcher.close()

    asyncio.run(main())


def test_a_prepare_hook_that_raises_fails_only_its_batch() -> None:
    async def main() -> None:
        recorder = Recorder()

        def prepare(key: str, items: list[int]) -> None:
            if key == "refused":
                raise LookupError("not warm")

        batcher = make(recorder, max_delay=0.0, prepare=prepare)
        batcher.start()
        refused = asyncio.ensure_future(batcher.submit("refused", 1))
        fine = asyncio.ensure_future(batcher.submit("fine", 2))
        with pytest.raises(LookupError, match="not warm"):
            await refused
        assert await fine == 20
        await batcher.close()

    asyncio.run(main())


def test_full_batches_of_a_key_being_prepared_wait_for_it() -> None:
    """Full batches would go at once; while their key's first batch is being prepared they wait,
    so the compile is asked for once and the slots are never exceeded."""

    async def main() -> None:
        recorder = Recorder()
        compiled = asyncio.get_running_loop().create_future()
        prepared: list[list[int]] = []

        def prepare(key: str, items: list[int]) -> asyncio.Future[None] | None:
            prepared.append(list(items))
            return None if compiled.done() else compiled

        batcher = make(
            recorder, max_delay=0.0, max_batch_rows=4, max_concurrent_batches=2, prepare=prepare
        )
        batcher.start()
        futures = [batcher.enqueue("cold", i) for i in range(12)]
        await asyncio.sleep(0.02)
        assert prepared == [[0, 1, 2, 3]] and recorder.batches == []
        compiled.set_result(None)
        assert await asyncio.gather(*futures) == [i * 10 for i in range(12)]
        assert [items for _, items in recorder.batches] == [
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [8, 9, 10, 11],
        ]
        await batcher.close()

    asyncio.run(main())


def test_a_request_that_times_out_or_leaves_while_its_batch_is_prepared_is_dropped() -> None:
    async def main() -> None:
        recorder = Recorder()
        compiled = asyncio.get_running_loop().create_future()

        def prepare(key: str, items: list[int]) -> asyncio.Future[None] | None:
            return None if compiled.done() else compiled

        batcher = make(recorder, max_delay=0.0, prepare=prepare)
        batcher.start()
        late = batcher.enqueue("cold", 1, timeout=0.02)
        gone = batcher.enqueue("cold", 2)
        kept = batcher.enqueue("cold", 3, timeout=5.0)
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(DeadlineExceeded):
            await late  # at its deadline, though its batch was taken
        compiled.set_result(None)
        assert await kept == 30
        assert recorder.batches == [("cold", [3])]
        await batcher.close()

    asyncio.run(main())
