"""Counters the daemon keeps about the frames it receives and processes.

One :class:`IngestStats` is shared by the daemon's threads (all methods take its lock);
:meth:`IngestStats.as_dict` returns the msgpack-able parts of the ``status`` message.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Drop reasons the daemon itself counts (the stacker's rejections are counted apart).
#: "shutdown" counts the frames still queued when the daemon stopped.
DROP_REASONS = ("malformed", "overflow", "wrong_size", "paused", "error", "shutdown")


@dataclass
class SourceStats:
    """What the daemon knows about one sender (by its header's ``source``)."""

    frames: int = 0  # frames received from it
    last_seq: int = -1  # sequence number of its latest frame
    gaps: int = 0  # frames missing between consecutive sequence numbers
    restarts: int = 0  # times its sequence number went backwards (a restarted source)
    last_time: float = 0.0  # capture time of its latest frame
    width: int = 0  # size and format of its latest frame
    height: int = 0
    dtype: str = ""
    layout: str = ""
    skipped_files: int = 0  # files the source could not read or send (its meta says)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class IngestStats:
    """Thread-safe counters, rates and recent per-frame qualities.

    Parameters
    ----------
    recent : int
        Number of processed frames whose quality is kept.
    rate_window : float
        Seconds over which rates are averaged.
    clock : callable
        Monotonic clock (seconds), injectable for tests.
    """

    def __init__(self, *, recent: int, rate_window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._window = rate_window
        self.received = 0
        self.processed = 0
        self.admitted = 0
        self.drops: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.rejected: Counter[str] = Counter()
        self.sources: dict[str, SourceStats] = {}
        # (index, quality, admitted, source, outcome: "admitted" or the rejection reason)
        self._recent: deque[tuple[int, float, bool, str, str]] = deque(maxlen=recent)
        self._samples: deque[tuple[float, int, int]] = deque()
        self.newest_seq = -1  # seq of the newest frame given to the stacker
        self.newest_source = ""
        self.newest_time: float | None = None  # its capture time (Unix seconds)
        self.newest_index = -1  # its index among all frames processed (0-based)
        self.newest_quality: float | None = None  # its quality (None: unknown)
        self.best_quality: float | None = None  # the best quality of any frame so far

    # -- updates ------------------------------------------------------------------------

    def on_received(self, header: dict[str, Any]) -> None:
        """Count a well-formed frame and track its sender's sequence numbers."""
        with self._lock:
            self.received += 1
            name = str(header.get("source", ""))
            src = self.sources.get(name)
            if src is None:
                src = self.sources[name] = SourceStats()
            seq = header["seq"]
            if src.last_seq >= 0:
                if seq > src.last_seq + 1:
                    src.gaps += seq - src.last_seq - 1
                elif seq <= src.last_seq:
                    src.restarts += 1
            src.last_seq = seq
            src.frames += 1
            src.last_time = float(header["time"])
            src.width, src.height = header["width"], header["height"]
            src.dtype, src.layout = header["dtype"], header["layout"]
            meta = header.get("meta")
            skipped = meta.get("skipped_files") if isinstance(meta, dict) else None
            if isinstance(skipped, int) and not isinstance(skipped, bool):
                src.skipped_files = skipped

    def on_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` frames dropped by the daemon for ``reason``."""
        if n:
            with self._lock:
                self.drops[reason] += n

    def on_processed(self, header: dict[str, Any], *, admitted: bool, reason: str | None,
                     quality: float) -> None:
        """Count a frame the stacker has taken (admitted into the stack or rejected)."""
        with self._lock:
            self.newest_index = self.processed
            self.processed += 1
            if admitted:
                self.admitted += 1
            else:
                self.rejected[reason or "rejected"] += 1
            q = float(quality) if quality == quality else -1.0  # NaN -> -1
            if q >= 0:
                self.newest_quality = q
                self.best_quality = q if self.best_quality is None else max(self.best_quality, q)
            outcome = "admitted" if admitted else reason or "rejected"
            self._recent.append((self.newest_index, q, bool(admitted), str(header["source"]),
                                 outcome))
            self.newest_seq = header["seq"]
            self.newest_source = str(header["source"])
            self.newest_time = float(header["time"])

    def sample_rates(self) -> dict[str, float]:
        """Record the counters now and return the rates over the window (frames/s)."""
        now = self._clock()
        with self._lock:
            self._samples.append((now, self.received, self.processed))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
                self._samples.popleft()
            t0, r0, p0 = self._samples[0]
            received, processed = self.received, self.processed
        dt = now - t0
        if dt <= 0:
            return {"received_fps": 0.0, "processed_fps": 0.0}
        return {"received_fps": (received - r0) / dt, "processed_fps": (processed - p0) / dt}

    # -- reading ------------------------------------------------------------------------

    def focus(self) -> dict[str, float | None]:
        """``{quality, best_quality}``: of the newest frame stacked, and the best so far."""
        with self._lock:
            return {"quality": self.newest_quality, "best_quality": self.best_quality}

    def as_dict(self) -> dict[str, Any]:
        """The counters as msgpack-able data for the status message."""
        with self._lock:
            recent = list(self._recent)
            return {
                "frames": {
                    "received": self.received,
                    "processed": self.processed,
                    "admitted": self.admitted,
                    "rejected": sum(self.rejected.values()),
                },
                "drops": dict(self.drops),
                "rejected": dict(self.rejected),
                "sources": {k: v.as_dict() for k, v in self.sources.items()},
                "gaps": sum(s.gaps for s in self.sources.values()),
                "recent": {
                    "index": [r[0] for r in recent],
                    "quality": [r[1] for r in recent],
                    "admitted": [r[2] for r in recent],
                    "outcomes": dict(Counter(r[4] for r in recent)),
                },
                "newest": {
                    "index": self.newest_index,
                    "seq": self.newest_seq,
                    "source": self.newest_source,
                    "time": self.newest_time,
                    "quality": self.newest_quality,
                    "best_quality": self.best_quality,
                },
            }
