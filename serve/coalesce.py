"""Coalesces concurrent single-image calls from the front into one model-service call.

BentoML batches at the model service, but every request still pays its own front -> model hop
(client, HTTP, pickling, the model service's request handling), and on a CPU that per-call
cost is as large as the model's. Here a call goes out at once when a slot is free; calls that
arrive while ``max_in_flight`` calls are out wait and leave together as the next batch, so an
idle server adds no latency and a busy one sends fewer, larger calls.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable

import numpy as np


class Coalescer:
    def __init__(self, call: Callable[[np.ndarray], Awaitable[np.ndarray]], max_batch: int,
                 max_in_flight: int = 1):
        self.call, self.max_batch, self.max_in_flight = call, max_batch, max_in_flight
        self.waiting: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.in_flight = 0
        self.calls = 0
        self._sending: set[asyncio.Task] = set()  # the loop holds tasks weakly: keep them alive

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        """``images``: (n, ...) rows (one per image); returns the model service's (n, k) rows."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.waiting and self.in_flight < self.max_in_flight:
            batch, size = [], 0
            while self.waiting and (not batch or size + len(self.waiting[0][0]) <= self.max_batch):
                batch.append(self.waiting.popleft())
                size += len(batch[-1][0])
            self.in_flight += 1
            self.calls += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            out = await self.call(np.concatenate([images for images, _ in batch]))
        except asyncio.CancelledError:  # shutting down
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller in the batch gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for images, future in batch:
                if not future.done():  # a caller that gave up (cancelled) is skipped
                    future.set_result(out[start:start + len(images)])
                start += len(images)
        finally:
            self.in_flight -= 1
            self._dispatch()
