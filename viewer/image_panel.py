"""The stack view: the latest stack with a levels histogram, zoom, pan and the AP grid."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QGraphicsPathItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from viewer.link import StackMessage

#: Largest stack value (uint16 full scale, which stands for 1.0).
FULL_SCALE = 65535

#: Percentiles of the stack that automatic levels map to black and white.
AUTO_LEVEL_PERCENTILES = (0.05, 99.95)

#: Pixels sampled (at most, by striding) to compute the automatic levels.
AUTO_LEVEL_SAMPLES = 1 << 18

#: Let pyqtgraph average the stack down to the screen resolution before drawing.
AUTO_DOWNSAMPLE = False

#: Colour and width (screen pixels) of the AP boxes.
AP_GRID_COLOUR = QColor(255, 170, 0, 200)
AP_GRID_WIDTH = 1.0


@dataclasses.dataclass(frozen=True)
class Levels:
    """Black and white points of the display, in stack units (0..65535)."""

    # Value shown black.
    low: float
    # Value shown white; greater than low.
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(f"levels must be finite, got low={self.low!r} high={self.high!r}")
        if not self.high > self.low:
            raise ValueError(f"high must be > low, got low={self.low!r} high={self.high!r}")


def auto_levels(image: np.ndarray) -> Levels:
    """Levels that stretch the bulk of ``image`` (a robust min/max on a subsample).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` stack.
    """
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, 3) array, got {image.shape}")
    pixels = image.shape[0] * image.shape[1]
    step = max(1, int(np.ceil(np.sqrt(pixels / AUTO_LEVEL_SAMPLES))))
    sample = image[::step, ::step]
    low, high = np.percentile(sample, AUTO_LEVEL_PERCENTILES)
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0
    return Levels(low, high)


def ap_grid_path(centres: Sequence[Sequence[float]], size: float) -> QPainterPath:
    """A path of one square of side ``size`` centred on each ``(y, x)`` of ``centres``.

    Coordinates are image coordinates: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``,
    so an AP centred on pixel ``(y, x)`` spans ``x - size/2 .. x + size/2`` around that
    pixel's centre.
    """
    if not size > 0:
        raise ValueError(f"ap_size must be > 0, got {size!r}")
    path = QPainterPath()
    half = size / 2.0
    for centre in centres:
        if len(centre) != 2:
            raise ValueError(f"ap_centres must hold (y, x) pairs, got {centre!r}")
        y, x = float(centre[0]) + 0.5, float(centre[1]) + 0.5
        path.addRect(x - half, y - half, size, size)
    return path


class StackView(QWidget):
    """The latest stack, its levels, and the AP grid over it.

    Auto levels (on by default) recompute the levels from each new stack; dragging the
    histogram's level region turns them off, and the levels then stay where the user put
    them. The mouse zooms (wheel) and pans (drag); "Fit" shows the whole stack again.
    """

    #: Emitted with the header's sequence number once a stack is on screen.
    stack_shown = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.view_box = self.graphics.addViewBox(row=0, col=0, lockAspect=True, invertY=True)
        self.view_box.setMenuEnabled(False)
        self.image_item = pg.ImageItem(axisOrder="row-major", autoDownsample=AUTO_DOWNSAMPLE)
        self.view_box.addItem(self.image_item)
        self.histogram = pg.HistogramLUTItem(image=self.image_item)
        self.graphics.addItem(self.histogram, row=0, col=1)
        self.grid_item = QGraphicsPathItem()
        pen = QPen(AP_GRID_COLOUR)
        pen.setWidthF(AP_GRID_WIDTH)
        pen.setCosmetic(True)
        self.grid_item.setPen(pen)
        self.grid_item.setZValue(10)
        self.grid_item.setVisible(False)
        self.view_box.addItem(self.grid_item)

        self.auto_levels_box = QCheckBox("Auto levels")
        self.auto_levels_box.setChecked(True)
        self.auto_levels_box.toggled.connect(self._auto_toggled)
        self.grid_box = QCheckBox("AP grid")
        self.grid_box.toggled.connect(self.grid_item.setVisible)
        self.fit_button = QPushButton("Fit")
        self.fit_button.clicked.connect(self.fit)
        self.info_label = QLabel("no stack yet")
        bar = QHBoxLayout()
        bar.addWidget(self.auto_levels_box)
        bar.addWidget(self.grid_box)
        bar.addWidget(self.fit_button)
        bar.addStretch(1)
        bar.addWidget(self.info_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.graphics, 1)

        self._shape: tuple[int, ...] | None = None
        self._updating = False
        self._image: np.ndarray | None = None
        self.histogram.sigLevelChangeFinished.connect(self._levels_dragged)

    @property
    def image(self) -> np.ndarray | None:
        """The stack on screen, or None."""
        return self._image

    def levels(self) -> Levels:
        """The current black and white points."""
        low, high = self.image_item.getLevels()
        return Levels(float(low), float(high))

    def set_levels(self, levels: Levels) -> None:
        """Set manual levels (turns auto levels off)."""
        self.auto_levels_box.setChecked(False)
        self._updating = True
        try:
            self.image_item.setLevels((levels.low, levels.high))
            self.histogram.setLevels(levels.low, levels.high)
        finally:
            self._updating = False

    def show_stack(self, stack: StackMessage) -> None:
        """Put ``stack`` on screen (keeping the zoom unless the size changed)."""
        image = stack.image
        self._updating = True
        try:
            if self.auto_levels_box.isChecked():
                lv = auto_levels(image)
                self.image_item.setImage(image, autoLevels=False, levels=(lv.low, lv.high))
            else:
                self.image_item.setImage(image, autoLevels=False)
        finally:
            self._updating = False
        self._image = image
        if image.shape != self._shape:
            self._shape = image.shape
            self.fit()
        meta = stack.header.get("meta", {})
        self._set_grid(meta.get("ap_centres"), meta.get("ap_size"))
        header = stack.header
        layout = "" if header["layout"] == "mono" else f" {header['layout']}"
        size = f"{header['width']}x{header['height']}"
        self.info_label.setText(f"stack #{header['seq']}  {size}{layout}")
        self.stack_shown.emit(int(header["seq"]))

    def fit(self) -> None:
        """Zoom to show the whole stack."""
        if self._shape is not None:
            self.view_box.autoRange(padding=0)

    def image_to_widget(self, x: float, y: float) -> QPointF:
        """Where the point ``(x, y)`` of the stack is in :attr:`graphics` coordinates."""
        scene = self.view_box.mapViewToScene(QPointF(x, y))
        return self.graphics.mapFromScene(scene).toPointF()

    def _set_grid(self, centres: object, size: object) -> None:
        try:
            if not centres or not isinstance(size, (int, float)) or isinstance(size, bool):
                path = QPainterPath()
            else:
                path = ap_grid_path(centres, size)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            path = QPainterPath()
        self.grid_item.setPath(path)

    def _auto_toggled(self, on: bool) -> None:
        if on and self._image is not None:
            lv = auto_levels(self._image)
            self._updating = True
            try:
                self.image_item.setLevels((lv.low, lv.high))
                self.histogram.setLevels(lv.low, lv.high)
            finally:
                self._updating = False

    def _levels_dragged(self) -> None:
        if not self._updating:
            self.auto_levels_box.setChecked(False)
