"""Camera control: exposure, gain, binning and ROI of the camera the source owns.

The daemon relays ``camera`` requests to the source (``live-stack source indi``) and
its answers back (daemon/camera.py); the status's ``camera`` map gives the camera's
current settings and their ranges. The panel is hidden while no source owns a camera.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from viewer.link import Reply

#: (setting, label, unit shown, factor from the wire's unit to the unit shown).
ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("exposure", "Exposure", "ms", 1000.0),
    ("gain", "Gain", "", 1.0),
    ("binning", "Binning", "", 1.0),
    ("roi", "ROI x y w h", "px", 1.0),
)

#: Style of the answer line.
OK_STYLE = "color: #2e7d32;"
ERROR_STYLE = "color: #c62828; font-weight: bold;"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def describe_setting(setting: Any, unit: str, factor: float) -> str:
    """``now 10 ms (0.001..3.6e+06)`` from ``{value, min, max}`` (``–`` when unknown)."""
    if not isinstance(setting, Mapping):
        return "not offered"
    value = setting.get("value")
    if isinstance(value, list):
        text = "now " + " ".join(str(v) for v in value)
        top = setting.get("max")
        return text + (f" (sensor {top[0]}x{top[1]})" if isinstance(top, list) else "")
    x = _number(value)
    text = "now –" if x is None else f"now {x * factor:.4g} {unit}".rstrip()
    lo, hi = _number(setting.get("min")), _number(setting.get("max"))
    if lo is not None and hi is not None and hi > lo:
        text += f" ({lo * factor:.4g}..{hi * factor:.4g})"
    return text


def parse_setting(name: str, text: str, factor: float) -> Any:
    """The wire value of what the user typed (ValueError naming the setting)."""
    try:
        if name == "roi":
            values = [int(v) for v in text.replace(",", " ").split()]
            if len(values) != 4:
                raise ValueError
            return values
        value = float(text) / factor
        return int(value) if name == "binning" and value == int(value) else value
    except ValueError:
        what = "4 whole numbers x y w h" if name == "roi" else "a number"
        raise ValueError(f"{name}: expected {what}, got {text!r}") from None


def format_camera_reply(reply: Reply) -> str:
    """A camera reply as one line: what was applied, and each refusal with its reason."""
    if not reply.ok:
        return f"camera: {reply.error}"
    result = reply.result if isinstance(reply.result, Mapping) else {}
    applied = result.get("applied") or {}
    refused = result.get("refused") or {}
    parts = [f"set {k}={v}" for k, v in applied.items()]
    parts += [f"REFUSED {k}: {why}" for k, why in refused.items()]
    return "camera: " + ("; ".join(parts) or "nothing changed")


class CameraPanel(QGroupBox):
    """One row per :data:`ROWS` setting: its current value and range, a field, "Set"."""

    #: Emitted with a ``camera`` request to send to the daemon.
    requested = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Camera", parent)
        grid = QGridLayout(self)
        self.source_label = QLabel("no camera")
        self.source_label.setWordWrap(True)
        # a long source name is cut at the panel's edge rather than widen the column
        self.source_label.setSizePolicy(QSizePolicy.Policy.Ignored,
                                        QSizePolicy.Policy.Preferred)
        grid.addWidget(self.source_label, 0, 0, 1, 4)
        self.rows: dict[str, tuple[QLabel, QLineEdit, QPushButton]] = {}
        for i, (name, label, unit, factor) in enumerate(ROWS, start=1):
            now = QLabel("–")
            now.setWordWrap(True)
            edit = QLineEdit()
            edit.setObjectName(f"camera_{name}")
            edit.setPlaceholderText(unit)
            button = QPushButton("Set")
            button.clicked.connect(lambda _=False, n=name, f=factor: self._set(n, f))
            edit.returnPressed.connect(lambda n=name, f=factor: self._set(n, f))
            grid.addWidget(QLabel(label), i, 0)
            grid.addWidget(edit, i, 1)
            grid.addWidget(button, i, 2)
            grid.addWidget(now, i, 3)
            self.rows[name] = (now, edit, button)
        self.reply_label = QLabel("")
        self.reply_label.setWordWrap(True)
        grid.addWidget(self.reply_label, len(ROWS) + 1, 0, 1, 4)
        self.state: dict[str, Any] = {}
        self.setVisible(False)

    def show_cameras(self, cameras: Any) -> None:
        """Show the status's ``camera`` map (hidden when no source owns a camera)."""
        if not isinstance(cameras, Mapping) or not cameras:
            self.setVisible(False)
            return
        source, entry = next(iter(cameras.items()))
        state = entry.get("state") if isinstance(entry, Mapping) else None
        if not isinstance(state, Mapping):
            return
        self.state = dict(state)
        self.source_label.setText(f"{state.get('device', '?')} ({state.get('mode', '?')}), "
                                  f"via {source}")
        for name, _, unit, factor in ROWS:
            now, edit, button = self.rows[name]
            offered = isinstance(state.get(name), Mapping)
            edit.setEnabled(offered)
            button.setEnabled(offered)
            now.setText(describe_setting(state.get(name), unit, factor))
        self.setVisible(True)

    def show_reply(self, reply: Reply) -> None:
        """Show the answer to a camera request (refusals in red, with their reasons)."""
        result = reply.result if isinstance(reply.result, Mapping) else {}
        bad = not reply.ok or bool(result.get("refused"))
        self.reply_label.setText(format_camera_reply(reply))
        self.reply_label.setStyleSheet(ERROR_STYLE if bad else OK_STYLE)
        state = result.get("state")
        if isinstance(state, Mapping) and result.get("source"):
            self.show_cameras({result["source"]: {"state": state}})

    def _set(self, name: str, factor: float) -> None:
        _, edit, _ = self.rows[name]
        try:
            value = parse_setting(name, edit.text(), factor)
        except ValueError as exc:
            self.reply_label.setText(f"camera: {exc}")
            self.reply_label.setStyleSheet(ERROR_STYLE)
            return
        self.requested.emit({"cmd": "camera", "settings": {name: value}})
