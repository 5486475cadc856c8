"""A bounded thread pool for per-frame work.

Frame sources are read from the calling thread only (sources are not thread-safe; video
decoding is sequential); the heavy per-frame work (OpenCV, ducc0 FFTs) releases the GIL
and runs on worker threads. At most ``2 * threads`` frames are in flight, so memory stays
bounded whatever the length of the capture.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_in_order(
    work: Callable[[T], None],
    items: Iterable[T],
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
    start: int = 0,
) -> None:
    """Call ``work(item)`` for each item, with up to ``threads`` calls running at once.

    ``items`` is consumed in the calling thread (so a generator that reads frames from a
    source reads them there); exceptions propagate to the caller.

    Parameters
    ----------
    work : callable
        Takes an item; its result is ignored.
    items : iterable
        The items, in the order they should be started.
    threads : int
        Worker threads; 1 runs everything in the calling thread.
    progress : callable, optional
        ``progress(done, total)`` after each completed call.
    total : int, optional
        Total reported to ``progress``.
    start : int
        Count already done before this call, for ``progress``.
    """
    done = start
    if threads <= 1:
        for item in items:
            work(item)
            done += 1
            if progress is not None:
                progress(done, total or done)
        return
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                while len(pending) >= 2 * threads:
                    pending.popleft().result()
                    done += 1
                    if progress is not None:
                        progress(done, total or done)
            while pending:
                pending.popleft().result()
                done += 1
                if progress is not None:
                    progress(done, total or done)
        finally:
            for fut in pending:
                fut.cancel()


R = TypeVar("R")


def split_run(
    work: Callable[[int, int], R],
    n: int,
    pool: Executor | None,
    *,
    parts: int = 2,
    min_items: int = 1,
) -> list[R]:
    """Call ``work(start, stop)`` over ``range(n)`` in up to ``parts`` parts at once.

    The first part runs in the calling thread, the others on ``pool``; the results come
    back in order. With no pool, one part, or too few items for two parts of
    ``min_items`` (too little to be worth a hand-over), ``work(0, n)`` runs in the
    calling thread alone. ``work`` must not change shared state: the parts run
    concurrently.

    Parameters
    ----------
    work : callable
        ``work(start, stop) -> result`` for the items ``start .. stop - 1``.
    n : int
        Number of items.
    pool : concurrent.futures.Executor or None
        Where the parts after the first run (it should have ``parts - 1`` workers).
    parts : int
        Most parts.
    min_items : int
        Fewest items worth a part of their own.

    Returns
    -------
    list
        One result per part, in order.
    """
    k = min(parts, n // max(1, min_items)) if pool is not None else 1
    if k <= 1:
        return [work(0, n)]
    bounds = [n * i // k for i in range(k + 1)]
    later = [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, k)]
    try:
        first = work(bounds[0], bounds[1])
    except BaseException:
        for fut in later:
            fut.cancel()
        raise
    return [first] + [fut.result() for fut in later]
