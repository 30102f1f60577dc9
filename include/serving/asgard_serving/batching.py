"""Prediction requests read in the same turn of the event loop are predicted in one call of the model.

Under load a worker reads several requests from its connections at once. Alone, each would pay
the model's fixed cost per call. Inside the server, between requests, that cost is far above its
quiet cost (``bench/serving_bench.py`` prints the model's seconds from ``/metrics``): ONNX
Runtime's code and the model's trees have left the CPU's caches by the time the next request
reaches them. One call for the requests of a turn pays it once.

No request is held back for others. Each request is checked in its own task. The batch is
predicted as soon as the requests already read have all been checked: the loop's next turn, with
no timer. So a request that arrives alone is predicted alone, without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

Reply = tuple[int, bytes]  # a request's answer: status and JSON body


class Ask(Protocol):
    """A checked prediction request: all a batch needs of it is its row count."""

    rows: int


class TurnBatch:
    """Collects the asks of one turn of the event loop and answers them together, at most ``max_rows``
    rows per call of ``answer_together`` (which answers a list of asks, in order)."""

    def __init__(self, answer_together: Callable[[list[Ask]], list[Reply]], max_rows: int) -> None:
        self.answer_together = answer_together
        self.max_rows = max_rows
        self.pending: list[tuple[Ask, asyncio.Future]] = []

    def answer(self, ask: Ask) -> asyncio.Future:
        """A future of the ask's reply, resolved in the loop's next turn."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.pending:
            loop.call_soon(self._predict)
        self.pending.append((ask, future))
        return future

    def _predict(self) -> None:
        pending, self.pending = self.pending, []
        chunk: list[tuple[Ask, asyncio.Future]] = []
        rows = 0
        for ask, future in pending:
            if chunk and rows + ask.rows > self.max_rows:
                self._answer(chunk)
                chunk, rows = [], 0
            chunk.append((ask, future))
            rows += ask.rows
        self._answer(chunk)

    def _answer(self, chunk: list[tuple[Ask, asyncio.Future]]) -> None:
        try:
            replies = self.answer_together([ask for ask, _ in chunk])
        except Exception as error:  # a fault of the server's own: each request fails with it, none hangs
            for _, future in chunk:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), reply in zip(chunk, replies, strict=True):
            if not future.done():  # a request whose task was cancelled meanwhile
                future.set_result(reply)
