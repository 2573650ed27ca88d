"""Run a generator in its own thread, a bounded number of items ahead of whoever consumes it.

Streaming consumers (the runpod SDK posting each item, an HTTP client reading a response) pause
between items; generation must not pause with them. :class:`RunAhead` keeps generating into a
queue of at most ``depth`` items while the consumer is busy, and stops the generator (closing it in
its own thread, between two items) when the consumer closes it or goes away.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class RunAhead(Generic[T]):
    """Iterate ``make()`` in a daemon thread; iteration or ``aiter()`` hands its items over in order.

    An exception raised by the generator is raised again to the consumer, after the items before it.
    """

    def __init__(self, make: Callable[[], Iterator[T]], depth: int = 8) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Wait for room in the queue; False when the consumer has closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[T]]) -> None:
        try:
            items = make()
            try:
                for item in items:
                    if not self._put(item):
                        return
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # a generator stops here, in the thread that ran it
        except BaseException as error:  # handed to the consumer, which decides what it means
            self._put(_Raised(error))
            return
        self._put(_END)

    def _take(self) -> object:
        """The next item, or ``_END``; raises the generator's exception."""
        if self._done:
            return _END
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set() and not self._thread.is_alive():  # closed: nothing more will come
                    self._done = True
                    return _END
        if item is _END or isinstance(item, _Raised):
            self._done = True
            self.close()
            if isinstance(item, _Raised):
                raise item.error
        return item

    def __iter__(self) -> Iterator[T]:
        try:
            while (item := self._take()) is not _END:
                yield item
        finally:
            self.close()

    async def aiter(self) -> AsyncIterator[T]:
        """The items for an async consumer; waiting happens in a worker thread, never on the event loop."""
        try:
            while (item := await asyncio.to_thread(self._take)) is not _END:
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating; the thread closes the generator after its current item."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (tests); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
