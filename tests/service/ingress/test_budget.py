"""The bodies' memory budget and the big bodies' thread, alone (no server)."""

from __future__ import annotations

import time

from service.ingress.budget import BodyBudget
from service.ingress.pacing import BigBodyThread


def test_the_budget_holds_what_is_reserved_until_released() -> None:
    budget = BodyBudget(1000)
    first = budget.reserve(600)
    assert budget.held == 600
    assert budget.fits(400) and not budget.fits(401)
    second = budget.reserve(400)
    first.release()
    first.release()  # once only
    assert budget.held == 400
    second.release()
    assert budget.held == 0


def test_one_body_always_fits_when_nothing_is_held() -> None:
    """The largest body the limits allow must never be refused for being alone."""
    budget = BodyBudget(1000)
    assert budget.fits(10**9)
    held = budget.reserve(10**9)
    assert not budget.fits(1)
    held.release()
    assert budget.fits(1)


def test_a_chunked_body_grows_its_reservation_until_the_budget_is_passed() -> None:
    budget = BodyBudget(1000)
    other = budget.reserve(300)
    chunked = budget.reserve(0)
    assert chunked.grow(500) and budget.held == 800
    assert chunked.grow(700) and budget.held == 1000
    assert not chunked.grow(701), "the budget would be passed"
    assert budget.held == 1000, "a refused growth holds nothing more"
    other.release()
    assert chunked.grow(5000), "alone, a body may grow (only the body cap stops it)"
    chunked.release()
    assert budget.held == 0


def test_the_big_bodies_thread_rests_only_while_small_requests_arrive() -> None:
    thread = BigBodyThread(share=0.5)
    try:
        busy = 0.05

        def work() -> float:
            time.sleep(busy)
            return time.perf_counter()

        # No small traffic: back to back.
        thread.executor.submit(thread.run, work).result()
        assert thread._free_at == 0.0  # nothing to wait for
        # Small traffic: the next job waits as long as the last one ran (share 1/2).
        thread.small_seen = time.perf_counter()
        ended = thread.executor.submit(thread.run, work).result()
        began = thread.executor.submit(thread.run, time.perf_counter).result()
        assert began - ended >= busy * 0.9
    finally:
        thread.executor.shutdown()
