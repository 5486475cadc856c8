"""A first-come, first-served lock.

The daemon's processing thread takes the stacker's lock again right after releasing it;
with an ordinary lock the publisher and the control thread, waiting for the same lock to
take a snapshot or change a parameter, could wait for many frames. :class:`FairLock`
hands the lock to the threads in the order they asked for it (a ticket lock), so each
waits for one batch of frames at most.
"""

from __future__ import annotations

import threading


class FairLock:
    """A non-reentrant lock granted in request order; a context manager like Lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # the ticket the next caller gets
        self._serving = 0  # the ticket that may hold the lock
        self._abandoned: set[int] = set()  # tickets whose callers gave up waiting

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the lock (at most ``timeout`` seconds); True if it was acquired."""
        with self._cond:
            ticket = self._next
            self._next += 1
            if self._cond.wait_for(lambda: self._serving == ticket, timeout):
                return True
            self._abandoned.add(ticket)
            return False

    def release(self) -> None:
        """Release the lock, handing it to the longest waiting caller."""
        with self._cond:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
