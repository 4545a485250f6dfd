"""The thread that decodes big bodies (and encodes their answers), and the share of time it takes.

JSON parsing holds the GIL: a 256 × 1024 ``/v1/topk`` body (2.2 MB) takes ~23 ms of it (orjson,
then NumPy from Python floats), during which the event loop, which reads, checks and answers
every small request, waits. Measured on 2 shared CPUs (bench/mixed.py: 64 clients of such bodies
beside 256 clients of 1 × 64 requests): decoding flat out, the small requests kept 17–24 % of their
throughput alone; with the big bodies' thread held to a share of the time, 52 % and 52 % at 0.25,
62 % and 66 % at 0.1 (same run; the big requests served fell from 8.5/s to 4.2/s). Running XLA on
one thread instead changed nothing (51 %, 62 %): the GIL, not the cores, is what the loop lacks.

So big bodies take turns on one thread (several threads would each take the loop's turn), and
while small requests are arriving (one in the last :data:`SMALL_TRAFFIC_WINDOW_S`), that thread
rests after each job: a job that took ``t`` seconds is followed by ``t × (1/share − 1)`` seconds
of nothing, so that it uses at most ``share`` (``TOPK_BIG_BODY_SHARE``) of the time. Without
small traffic it runs flat out: big requests alone lose nothing. Binary OIP tensors cost almost
no decoding, which is the better way to send big inputs.

JSON bodies are now parsed in a child process (:mod:`service.ingress.reader_process`): this
thread waits for it without the GIL, and writes the big answers. The rests still hold the CPU
that big bodies take, the child's included, to ``share`` while small requests arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

V = TypeVar("V")

SMALL_TRAFFIC_WINDOW_S = 0.1


class BigBodyThread:
    """One worker thread; :meth:`run` is what to hand to ``loop.run_in_executor``."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topk-bodies")
        self.small_seen = -SMALL_TRAFFIC_WINDOW_S  # perf_counter() of the last small request
        self._free_at = 0.0

    def run(self, function: Callable[..., V], *args: object) -> V:
        """Run ``function(*args)`` on the worker thread (called there), resting first if due."""
        rest = self._free_at - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        began = time.perf_counter()
        try:
            return function(*args)
        finally:
            ended = time.perf_counter()
            busy = ended - began
            active = ended - self.small_seen < SMALL_TRAFFIC_WINDOW_S
            self._free_at = ended + busy * (1 / self.share - 1) if active else 0.0
