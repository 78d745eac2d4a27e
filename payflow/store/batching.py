"""The loop both stores' group commits run: callers queue items, one task applies what is queued as one batch
while the previous one is in flight, and a task that stops for any reason fails every caller still waiting.

A plain deque and one wake-up future rather than an asyncio.Queue: the queue's bookkeeping (waiters,
unfinished-task counts) cost a few µs per write on the notify path. Subclasses say how a batch is taken
(`_take`, by default the oldest `max_batch` items) and applied (`_apply`, which resolves each item's future).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Generic, Protocol, TypeVar

from payflow import errors


class Queued(Protocol):
    @property
    def future(self) -> asyncio.Future[Any]: ...


I = TypeVar("I", bound=Queued)  # noqa: E741 — the item type, as in the subclasses' annotations


class BatchLoop(Generic[I]):
    def __init__(self, name: str, *, max_batch: int) -> None:
        self._name = name
        self._max_batch = max_batch
        self._pending: collections.deque[I] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None  # set while the task waits for work
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, with the task started on first use; StoreUnavailable once closed or stopped."""
        if self._closed:
            raise errors.StoreUnavailable("the store is closed")
        if self._task is not None and self._task.done():
            raise errors.StoreUnavailable("the store's writer has stopped")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name=self._name)
        return loop

    def _enqueue(self, item: I) -> None:
        self._pending.append(item)
        self._wake()

    async def _finish(self) -> BaseException | None:
        """Stop taking items, let the task apply what is queued, and return how it ended if it failed."""
        self._closed = True
        if self._task is None:
            return None
        self._wake()
        # wait() rather than await: a task that died (cancelled, or a bug) must not stop the caller from
        # releasing what it holds after it.
        await asyncio.wait({self._task})
        return None if self._task.cancelled() else self._task.exception()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _take(self) -> list[I]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(len(pending), self._max_batch))]

    async def _apply(self, batch: list[I]) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        pending = self._pending
        batch: list[I] = []
        try:
            while True:
                if not pending:
                    if self._closed:
                        return
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                    self._wakeup = None
                    continue
                batch = self._take()
                if batch:
                    await self._apply(batch)
                batch = []
        finally:
            # Stopped other than by close() (cancelled, or a bug): nobody may wait forever, and nobody may be told
            # that a write of the interrupted batch committed. "Unavailable" makes WeChat deliver again, and a
            # notification that did commit is then recognised by its id.
            stopped = errors.StoreUnavailable("the store's writer has stopped")
            for item in (*batch, *pending):
                if not item.future.done():
                    item.future.set_exception(stopped)
            pending.clear()
