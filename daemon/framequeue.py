"""A bounded frame queue that drops the oldest items when full.

The daemon's receive thread puts every decoded frame here and the processing thread
takes them out. When frames come faster than the stacker takes them, keeping the newest
ones keeps the live stack close to the sky: the oldest waiting frames are dropped and
handed back to the caller so that they can be counted. The queue is bounded both in
items and in bytes, so that its memory stays bounded whatever the frame size.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by :meth:`DropOldestQueue.get` once the queue has been closed."""


class DropOldestQueue(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` items (and ``max_bytes`` bytes) that
    drops its oldest when full.

    Parameters
    ----------
    maxsize : int
        Largest number of items held; at least 1.
    max_bytes : int, optional
        Largest sum of the items' sizes (as given to :meth:`put`); the newest item is
        always kept, even alone above it. Default: no limit.
    """

    def __init__(self, maxsize: int, *, max_bytes: int | None = None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int)
                                      or isinstance(max_bytes, bool) or max_bytes < 1):
            raise ValueError(f"max_bytes must be an integer >= 1 or None, got {max_bytes!r}")
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: deque[tuple[T, int]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    @property
    def maxsize(self) -> int:
        """Largest number of items held."""
        return self._maxsize

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Sum of the sizes of the items held."""
        with self._cond:
            return self._bytes

    def put(self, item: T, nbytes: int = 0) -> list[T]:
        """Append ``item`` (of ``nbytes`` bytes); remove and return the oldest items that
        no longer fit (none while the queue has room).

        Raises
        ------
        QueueClosed
            If the queue has been closed.
        """
        with self._cond:
            if self._closed:
                raise QueueClosed("the queue is closed")
            self._items.append((item, nbytes))
            self._bytes += nbytes
            dropped = []
            while len(self._items) > 1 and (
                    len(self._items) > self._maxsize
                    or (self._max_bytes is not None and self._bytes > self._max_bytes)):
                old, size = self._items.popleft()
                self._bytes -= size
                dropped.append(old)
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
            item, size = self._items.popleft()
            self._bytes -= size
            return item

    def clear(self) -> int:
        """Drop every waiting item; return how many there were."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._bytes = 0
            return n

    def close(self) -> int:
        """Close the queue, waking every waiting :meth:`get`; return the items discarded."""
        with self._cond:
            self._closed = True
            n = len(self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
            return n
