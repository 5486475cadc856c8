"""The raw frames beside the stack: a live view, the focus aid, the histogram, clipping.

Everything here comes from the daemon's ``preview`` messages (daemon/preview.py): the
newest frame, decimated, with its per-channel histogram and clipped share measured on
the full frame, and the quality of the newest frame stacked with the best so far.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from viewer.image_panel import auto_levels
from viewer.link import PreviewMessage

#: Share of a channel's pixels at full scale above which clipping is shown as a warning:
#: a thousandth is already a planet's limb or a lunar crater rim burnt out.
SATURATION_WARN = 0.001

#: Seconds of focus figures kept in the focus graph.
FOCUS_SECONDS = 120.0

#: Colours of the histogram's channels, and of the focus graph's lines.
CHANNEL_COLOURS = {"L": (220, 220, 220), "R": (235, 80, 80), "G": (80, 200, 100),
                   "B": (90, 140, 255)}
FOCUS_COLOUR = (80, 200, 120)
BEST_COLOUR = (255, 200, 0)

#: Look of the big focus number and of the clipping warning.
BIG_NUMBER_STYLE = "font-size: 28pt; font-weight: bold;"
WARN_STYLE = "background: #b71c1c; color: white; font-weight: bold; padding: 2px;"
OK_STYLE = "padding: 2px;"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value):
        return None
    return float(value)


def clipping_text(clipped: Any) -> tuple[str, bool]:
    """``("clipped: R 0.00 %, G 1.20 %", warn)`` from a preview's ``clipped`` map; ``warn``
    is True when a channel's share exceeds :data:`SATURATION_WARN`."""
    if not isinstance(clipped, Mapping) or not clipped:
        return "clipped: –", False
    parts, warn = [], False
    for name, share in clipped.items():
        x = _number(share)
        if x is None:
            continue
        warn |= x > SATURATION_WARN
        parts.append(f"{name} {100 * x:.2f} %")
    return ("SATURATED: " if warn else "clipped: ") + ", ".join(parts), warn


class RawView(QWidget):
    """The newest raw frame (decimated), with its frame rate and quality."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.view_box = self.graphics.addViewBox(lockAspect=True, invertY=True)
        self.view_box.setMenuEnabled(False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view_box.addItem(self.image_item)
        self.info_label = QLabel("no raw frame yet")
        self.info_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Raw frames (live)"))
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.info_label)
        self._shape: tuple[int, ...] | None = None
        self.image: np.ndarray | None = None
        self.header: dict[str, Any] = {}  # the header of the preview on screen
        self.shown = 0

    def show_preview(self, preview: PreviewMessage) -> None:
        """Put a preview on screen, stretched to its bulk (as the stack view's auto levels)."""
        image = preview.image
        lv = auto_levels(image)
        self.image_item.setImage(image, autoLevels=False, levels=(lv.low, lv.high))
        self.image = image
        self.header = preview.header
        if image.shape != self._shape:
            self._shape = image.shape
            self.view_box.autoRange(padding=0)
        h, meta = preview.header, preview.header["meta"]
        text = f"frame #{h['seq']}  {meta.get('frame_width')}x{meta.get('frame_height')}"
        text += f" {meta.get('frame_layout', '')}"
        k = _number(meta.get("decimation"))
        if k and k > 1:
            text += f", shown 1/{int(k)}"
        fps = _number(meta.get("received_fps"))
        if fps is not None:
            text += f", {fps:.1f} frames/s"
        exposure = _number(h.get("exposure"))
        if exposure is not None:
            text += f", exposure {exposure * 1000:.3g} ms"
        q = _number(meta.get("quality"))
        if q is not None:
            text += f", quality {q:.4g}"
        self.info_label.setText(text)
        self.shown += 1


class FocusPanel(QWidget):
    """The focus aid: the newest frame's quality as a big number, the best so far, and a
    graph of the last :data:`FOCUS_SECONDS` seconds with the best as a line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.number = QLabel("–")
        self.number.setObjectName("focus_number")
        self.number.setStyleSheet(BIG_NUMBER_STYLE)
        self.number.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.best_label = QLabel("best –")
        self.best_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot = pg.PlotWidget(title="Focus: newest frames' quality")
        self.plot.setLabel("bottom", "seconds ago")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(FOCUS_COLOUR, width=2))
        self.best_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(BEST_COLOUR))
        self.best_line.setVisible(False)
        self.plot.addItem(self.best_line)
        numbers = QVBoxLayout()
        numbers.addWidget(QLabel("Focus"))
        numbers.addWidget(self.number)
        numbers.addWidget(self.best_label)
        numbers.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(numbers, 1)
        layout.addWidget(self.plot, 3)
        self._points: deque[tuple[float, float]] = deque()
        self.best: float | None = None

    def add(self, meta: Mapping[str, Any], now: float | None = None) -> None:
        """Take a preview's focus figures (``quality``, ``best_quality``)."""
        now = time.monotonic() if now is None else now
        q, best = _number(meta.get("quality")), _number(meta.get("best_quality"))
        if best is not None:
            self.best = best
            self.best_line.setValue(best)
            self.best_line.setVisible(True)
        if q is None:
            return
        self._points.append((now, q))
        while self._points and now - self._points[0][0] > FOCUS_SECONDS:
            self._points.popleft()
        self.number.setText(f"{q:.4g}")
        if self.best:
            self.best_label.setText(f"best {self.best:.4g} (now {100 * q / self.best:.0f} %)")
        t = np.array([p[0] - now for p in self._points])
        self.curve.setData(t, np.array([p[1] for p in self._points]))


class LevelsPanel(QWidget):
    """The raw frames' histogram per channel (log counts) and their clipped shares."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(title="Raw histogram")
        self.plot.setLogMode(x=False, y=True)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.curves: dict[str, Any] = {}
        self.clip_label = QLabel("clipped: –")
        self.clip_label.setObjectName("clipping")
        self.warning = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.clip_label)

    def show_levels(self, levels: Any) -> None:
        """Show a preview's ``levels`` map (ignored when malformed)."""
        if not isinstance(levels, Mapping):
            return
        edges, hist = levels.get("edges"), levels.get("hist")
        if isinstance(edges, list) and isinstance(hist, Mapping):
            x = np.asarray(edges, dtype=np.float64)
            for name, counts in hist.items():
                y = np.asarray(counts, dtype=np.float64)
                if y.ndim != 1 or x.shape != (y.size + 1,):
                    continue
                if name not in self.curves:
                    self.curves[name] = self.plot.plot(
                        [], [], stepMode="center", pen=pg.mkPen(CHANNEL_COLOURS.get(name,
                                                                                    (200,) * 3)))
                # log axis: empty bins drawn at 1 (10^0) rather than -inf
                self.curves[name].setData(x, np.maximum(y, 1.0), stepMode="center")
        text, warn = clipping_text(levels.get("clipped"))
        self.warning = warn
        self.clip_label.setText(text)
        self.clip_label.setStyleSheet(WARN_STYLE if warn else OK_STYLE)


class RawPanel(QWidget):
    """The raw view above the focus aid and the histogram."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = RawView()
        self.focus = FocusPanel()
        self.levels = LevelsPanel()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 3)
        layout.addWidget(self.focus, 1)
        layout.addWidget(self.levels, 1)

    def show_preview(self, preview: PreviewMessage) -> None:
        meta = preview.header["meta"]
        self.view.show_preview(preview)
        self.focus.add(meta)
        self.levels.show_levels(meta.get("levels"))
