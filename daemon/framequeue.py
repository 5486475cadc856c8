"""A bounded frame queue that drops the oldest item when full.

The daemon's receive thread puts every decoded frame here and the processing thread
takes them out. When frames come faster than the stacker takes them, keeping the newest
ones keeps the live stack close to the sky: the oldest waiting frame is dropped and
handed back to the caller so that it can be counted.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by :meth:`DropOldestQueue.get` once the queue has been closed."""


class DropOldestQueue(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` items that drops its oldest when full.

    Parameters
    ----------
    maxsize : int
        Largest number of items held; at least 1.
    """

    def __init__(self, maxsize: int) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    @property
    def maxsize(self) -> int:
        """Largest number of items held."""
        return self._maxsize

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> T | None:
        """Append ``item``; if the queue was full, remove and return the oldest item.

        Raises
        ------
        QueueClosed
            If the queue has been closed.
        """
        with self._cond:
            if self._closed:
                raise QueueClosed("the queue is closed")
            dropped = self._items.popleft() if len(self._items) >= self._maxsize else None
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T | None:
        """Remove and return the oldest item, waiting up to ``timeout`` seconds for one.

        Returns ``None`` if the wait timed out (never when ``timeout`` is None).

        Raises
        ------
        QueueClosed
            If the queue is (or becomes, while waiting) closed.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if self._closed:
                raise QueueClosed("the queue is closed")
            return self._items.popleft()

    def clear(self) -> int:
        """Drop every waiting item; return how many there were."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    def close(self) -> int:
        """Close the queue, waking every waiting :meth:`get`; return the items discarded."""
        with self._cond:
            self._closed = True
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n
