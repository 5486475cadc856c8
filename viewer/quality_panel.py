"""Frame quality: quality of each frame over time, and the buffer's quality histogram."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QHBoxLayout, QWidget

#: Colours of admitted and rejected frames, the threshold and the histogram.
ADMITTED_COLOUR = (80, 200, 120)
REJECTED_COLOUR = (230, 80, 80)
THRESHOLD_COLOUR = (255, 200, 0)
HISTOGRAM_COLOUR = (100, 150, 255, 160)

#: Size (screen pixels) of a frame's dot in the quality graph.
POINT_SIZE = 4


def recent_points(recent: Any) -> list[tuple[float, float, bool]]:
    """``(index, quality, admitted)`` of each frame in a status's ``recent`` map.

    ``recent`` is ``{"index": [...], "quality": [...], "admitted": [...]}`` (parallel
    lists, oldest first); entries that are not numbers, or negative qualities (frames
    without one), are skipped, and anything else than such a map gives no points.
    """
    if not isinstance(recent, Mapping):
        return []
    index, quality, admitted = (recent.get(k) for k in ("index", "quality", "admitted"))
    if not all(isinstance(v, (list, tuple)) for v in (index, quality, admitted)):
        return []
    if not len(index) == len(quality) == len(admitted):
        return []
    points = []
    for i, q, a in zip(index, quality, admitted, strict=True):
        if _finite(i) and _finite(q) and q >= 0:  # the daemon sends -1 for "no quality"
            points.append((float(i), float(q), bool(a)))
    return points


def _finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
    )


class QualityHistory:
    """The last ``capacity`` frames' ``(index, quality, admitted)``, merged from statuses.

    Each status carries the most recent frames; consecutive statuses overlap, so a point
    is added only if its index is above the newest one held. If a status's newest index
    is below the newest one held, the daemon started counting again (a restart) and the
    history starts over.

    Parameters
    ----------
    capacity : int
        Number of frames kept.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self._points: deque[tuple[float, float, bool]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._points)

    def add(self, points: Iterable[tuple[float, float, bool]]) -> int:
        """Merge ``(index, quality, admitted)`` points; return how many were new."""
        batch = sorted(points, key=lambda p: p[0])
        if not batch:
            return 0
        if self._points and batch[-1][0] < self._points[-1][0]:
            self._points.clear()
        newest = self._points[-1][0] if self._points else -np.inf
        new = [p for p in batch if p[0] > newest]
        self._points.extend(new)
        return len(new)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indices, qualities, admitted)`` as arrays (float64, float64, bool)."""
        if not self._points:
            return np.empty(0), np.empty(0), np.empty(0, dtype=bool)
        i, q, a = zip(*self._points, strict=True)
        return np.asarray(i), np.asarray(q), np.asarray(a, dtype=bool)


def histogram_arrays(quality: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(edges, counts)`` from a status's ``quality`` map, or None if malformed."""
    hist, edges = quality.get("hist"), quality.get("edges")
    if not isinstance(hist, (list, tuple)) or not isinstance(edges, (list, tuple)):
        return None
    try:
        counts = np.asarray(hist, dtype=np.float64)
        bins = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if counts.ndim != 1 or bins.shape != (counts.size + 1,) or not np.all(np.isfinite(bins)):
        return None
    return bins, counts


def _positive_or_zero(value: Any) -> float | None:
    """``value`` as a float if it is a finite number >= 0, else None."""
    if not _finite(value) or value < 0:
        return None
    return float(value)


class QualityPanel(QWidget):
    """The quality graph (of the frames before the newest) and the buffer's histogram.

    Parameters
    ----------
    capacity : int
        Frames kept in the quality graph.
    """

    def __init__(self, capacity: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = QualityHistory(capacity)
        #: The best frame quality seen (what relative qualities are relative to), or None.
        self.best: float | None = None
        self.time_plot = pg.PlotWidget(title="Frame quality")
        self.time_plot.setLabel("bottom", "frames before the newest")
        self.time_plot.setLabel("left", "quality")
        self.time_plot.getAxis("left").enableAutoSIPrefix(False)
        self.admitted_item = self.time_plot.plot(
            [], [], pen=None, symbol="o", symbolSize=POINT_SIZE, symbolPen=None,
            symbolBrush=ADMITTED_COLOUR, name="admitted",
        )
        self.rejected_item = self.time_plot.plot(
            [], [], pen=None, symbol="o", symbolSize=POINT_SIZE, symbolPen=None,
            symbolBrush=REJECTED_COLOUR, name="rejected",
        )
        self.time_threshold = pg.InfiniteLine(angle=0, pen=pg.mkPen(THRESHOLD_COLOUR))
        self.time_threshold.setVisible(False)
        self.time_plot.addItem(self.time_threshold)

        self.hist_plot = pg.PlotWidget(title="Buffer qualities")
        self.hist_plot.setLabel("bottom", "quality")
        self.hist_plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.hist_plot.setLabel("left", "frames")
        self.hist_item = self.hist_plot.plot(
            [0.0, 1.0], [0.0], stepMode="center", fillLevel=0, brush=HISTOGRAM_COLOUR
        )
        self.hist_threshold = pg.InfiniteLine(angle=90, pen=pg.mkPen(THRESHOLD_COLOUR))
        self.hist_threshold.setVisible(False)
        self.hist_plot.addItem(self.hist_threshold)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.time_plot, 3)
        layout.addWidget(self.hist_plot, 2)

    def add_recent(self, recent: Any) -> None:
        """Merge a status's ``recent`` map and redraw if it brought new frames."""
        if self.history.add(recent_points(recent)):
            self._draw_frames()

    def show_quality(self, quality: Any) -> None:
        """Show a ``{hist, edges, threshold, best}`` map (ignored if malformed).

        The histogram and the threshold are relative to ``best``, the best frame
        quality seen; the frames' qualities are divided by it too, so that all three
        share one scale. Without ``best`` the frames are shown as they come.
        """
        if not isinstance(quality, Mapping):
            return
        arrays = histogram_arrays(quality)
        if arrays is not None:
            self.hist_item.setData(arrays[0], arrays[1], stepMode="center", fillLevel=0,
                                   brush=HISTOGRAM_COLOUR)
        threshold = _positive_or_zero(quality.get("threshold"))
        for line in (self.time_threshold, self.hist_threshold):
            line.setVisible(threshold is not None)
            if threshold is not None:
                line.setValue(threshold)
        best = _positive_or_zero(quality.get("best")) or None
        if best != self.best:
            self.best = best
            label = "quality" if best is None else "quality / best"
            self.time_plot.setLabel("left", label)
            self.hist_plot.setLabel("bottom", label)
            self._draw_frames()

    def _draw_frames(self) -> None:
        t, q, a = self.history.arrays()
        if not t.size:
            return
        t = t - t[-1]
        if self.best is not None:
            q = q / self.best
        self.admitted_item.setData(t[a], q[a])
        self.rejected_item.setData(t[~a], q[~a])
