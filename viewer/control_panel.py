"""Controls: reset, pause/resume, save, the live parameters, and the daemon's answers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from viewer.link import Reply, describe_request

#: Answers kept in the panel's log.
LOG_LINES = 200

#: Height of the answers' log, in lines of text.
LOG_VISIBLE_LINES = 4

#: Characters the parameter-name box is wide enough for.
OTHER_NAME_CHARS = 16

#: Style of the last-answer line.
OK_STYLE = "color: #2e7d32;"
ERROR_STYLE = "color: #c62828; font-weight: bold;"


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A live parameter with a row of its own."""

    # Parameter name as the daemon's "set" command knows it (live_stack.live.LiveParams
    # field, or PREFIX_FIELD for a phase's field such as ap_size).
    name: str
    # Text shown beside it.
    label: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"name must be a parameter name, got {self.name!r}")
        if not self.label:
            raise ValueError("label must not be empty")


#: The live parameters with a row of their own; any other one can be set by name.
LIVE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("stack_size", "Stack size (frames or %)"),
    ParamSpec("buffer_size", "Buffer size (frames)"),
    ParamSpec("window_seconds", "Window (s, 0: all)"),
    ParamSpec("window_frames", "Window (frames, 0: all)"),
    ParamSpec("ap_size", "AP size (px)"),
)


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The daemon's ``params`` map with nested phase maps as ``PREFIX_FIELD`` names.

    ``{"buffer_size": 200, "ap": {"size": 48}}`` gives
    ``{"buffer_size": 200, "ap_size": 48}``, the names the ``set`` command takes.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                flat[f"{key}_{sub}"] = v
        else:
            flat[str(key)] = value
    return flat


def parse_value(text: str) -> Any:
    """A parameter value typed by the user: int, float, true/false, or the text itself.

    Comma-separated values give a list of such values.
    """
    text = text.strip()
    if not text:
        raise ValueError("value must not be empty")
    if "," in text:
        return [parse_value(item) for item in text.split(",")]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def format_value(value: Any) -> str:
    """A parameter value as the user would type it (see :func:`parse_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def format_reply(reply: Reply) -> str:
    """One line for a reply: ``reset: ok``, ``save: ok: path=a.tif``, ``set x=1: error: ...``."""
    what = describe_request(reply.request)
    if not reply.ok:
        return f"{what}: error: {reply.error}"
    result = reply.result
    if result is None or result == {} or result is True:
        return f"{what}: ok"
    if isinstance(result, Mapping):
        text = ", ".join(f"{k}={v}" for k, v in result.items())
    else:
        text = str(result)
    return f"{what}: ok: {text}"


class ControlPanel(QGroupBox):
    """Buttons and fields that send control requests; shows every answer.

    Emits :attr:`requested` with the request map; the window sends it and hands the
    answer back to :meth:`show_reply`.

    Parameters
    ----------
    params : tuple of ParamSpec
        The live parameters given a row of their own.
    """

    #: A control request to send, e.g. ``{"cmd": "reset"}``.
    requested = Signal(dict)

    def __init__(self, params: tuple[ParamSpec, ...] = LIVE_PARAMS,
                 parent: QWidget | None = None) -> None:
        super().__init__("Control", parent)
        self.reset_button = QPushButton("Reset")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.save_button = QPushButton("Save now")
        self.reset_button.clicked.connect(lambda: self.requested.emit({"cmd": "reset"}))
        self.pause_button.clicked.connect(lambda: self.requested.emit({"cmd": "pause"}))
        self.resume_button.clicked.connect(lambda: self.requested.emit({"cmd": "resume"}))
        self.save_button.clicked.connect(lambda: self.requested.emit({"cmd": "save"}))
        buttons = QHBoxLayout()
        for b in (self.reset_button, self.pause_button, self.resume_button, self.save_button):
            buttons.addWidget(b)

        grid = QGridLayout()
        #: name -> (label, value field, Set button) of each parameter row.
        self.rows: dict[str, tuple[QLabel, QLineEdit, QPushButton]] = {}
        for row, spec in enumerate(params):
            label = QLabel(spec.label)
            edit = QLineEdit()
            edit.setObjectName(f"param_{spec.name}")
            edit.returnPressed.connect(lambda n=spec.name: self._send_row(n))
            button = QPushButton("Set")
            button.clicked.connect(lambda _=False, n=spec.name: self._send_row(n))
            grid.addWidget(label, row, 0)
            grid.addWidget(edit, row, 1)
            grid.addWidget(button, row, 2)
            self.rows[spec.name] = (label, edit, button)
        row = len(params)
        self.other_name = QComboBox()
        self.other_name.setEditable(True)
        self.other_name.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.other_name.lineEdit().setPlaceholderText("other parameter")
        self.other_name.textActivated.connect(self._other_chosen)
        self.other_name.setMinimumContentsLength(OTHER_NAME_CHARS)
        self.other_name.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.other_value = QLineEdit()
        self.other_value.setPlaceholderText("value")
        self.other_value.returnPressed.connect(self._send_other)
        self.other_button = QPushButton("Set")
        self.other_button.clicked.connect(self._send_other)
        grid.addWidget(self.other_name, row, 0)
        grid.addWidget(self.other_value, row, 1)
        grid.addWidget(self.other_button, row, 2)

        self.reply_label = QLabel("")
        self.reply_label.setWordWrap(True)
        self.reply_label.setObjectName("last_reply")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setMaximumHeight(self.log.fontMetrics().lineSpacing() * (LOG_VISIBLE_LINES + 1))

        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(grid)
        layout.addWidget(self.reply_label)
        layout.addWidget(self.log)
        #: The daemon's live parameters as last reported, flattened (see flatten_params).
        self.params: dict[str, Any] = {}

    def show_reply(self, reply: Reply) -> None:
        """Show the daemon's answer (errors in red) and log it."""
        text = format_reply(reply)
        self.reply_label.setText(text)
        self.reply_label.setStyleSheet(OK_STYLE if reply.ok else ERROR_STYLE)
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def show_state(self, state: Any) -> None:
        """Enable pause or resume according to the daemon's state."""
        self.pause_button.setEnabled(state != "paused")
        self.resume_button.setEnabled(state != "running")

    def show_params(self, params: Any) -> None:
        """Show the daemon's live parameters and their current values.

        A row whose parameter the daemon does not have is hidden; a field being edited
        keeps the user's text; the "other parameter" list offers every name.
        """
        if not isinstance(params, Mapping):
            return
        self.params = flatten_params(params)
        for name, (label, edit, button) in self.rows.items():
            known = name in self.params
            for widget in (label, edit, button):
                widget.setVisible(known)
            if known and not edit.hasFocus():
                edit.setText(format_value(self.params[name]))
        names = sorted(self.params)
        current = [self.other_name.itemText(i) for i in range(self.other_name.count())]
        if names != current:
            text = self.other_name.currentText()
            self.other_name.clear()
            self.other_name.addItems(names)
            self.other_name.setEditText(text)

    def _other_chosen(self, name: str) -> None:
        if name in self.params:
            self.other_value.setText(format_value(self.params[name]))

    def _send_row(self, name: str) -> None:
        self._send(name, self.rows[name][1].text())

    def _send_other(self) -> None:
        self._send(self.other_name.currentText().strip(), self.other_value.text())

    def _send(self, name: str, text: str) -> None:
        if not name:
            self._local_error({"cmd": "set", "name": "?", "value": None}, "name must not be empty")
            return
        try:
            value = parse_value(text)
        except ValueError as exc:
            self._local_error({"cmd": "set", "name": name, "value": None}, str(exc))
            return
        self.requested.emit({"cmd": "set", "name": name, "value": value})

    def _local_error(self, request: dict[str, Any], error: str) -> None:
        self.show_reply(Reply(request, False, None, error))
