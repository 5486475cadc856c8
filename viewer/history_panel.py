"""The session's stack history: every saved stack, listed, and one re-opened on demand.

The daemon answers ``history`` with its stack index and ``load`` with a listed file's
pixels (daemon/history.py); the list is asked for again whenever the status says the
number of saves changed. A re-opened stack replaces the live one in the stack view until
"Back to live".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from viewer.link import Reply, StackMessage

#: Height of the list, in pixels (about five rows; it scrolls beyond).
LIST_HEIGHT_PX = 120


def describe_record(record: Mapping[str, Any]) -> str:
    """``0003  21:04:05  request  240 frames (200 in buffer)`` of an index record."""
    number = record.get("number")
    when = record.get("time")
    clock = time.strftime("%H:%M:%S", time.localtime(when)) if isinstance(
        when, (int, float)) else "?"
    text = f"{number:04d}" if isinstance(number, int) else "????"
    text += f"  {clock}  {record.get('reason', '?')}"
    admitted, buffered = record.get("frames_admitted"), record.get("frames_in_buffer")
    if isinstance(admitted, int):
        text += f"  {admitted} frames"
        if isinstance(buffered, int):
            text += f" ({buffered} in buffer)"
    params = record.get("params")
    if isinstance(params, Mapping) and "stack_size" in params:
        text += f", stack size {params['stack_size']}"
    return text


def stack_from_load(result: Mapping[str, Any]) -> StackMessage:
    """A :class:`StackMessage` of a ``load`` answer, for the stack view.

    Raises
    ------
    ValueError
        If the answer's pixels do not match its size and layout.
    """
    width, height, layout = result.get("width"), result.get("height"), result.get("layout")
    pixels = result.get("pixels")
    if not (isinstance(width, int) and isinstance(height, int) and layout in ("mono", "rgb")
            and isinstance(pixels, bytes)):
        raise ValueError("the daemon's load answer lacks width, height, layout or pixels")
    shape = (height, width, 3) if layout == "rgb" else (height, width)
    if len(pixels) != int(np.prod(shape)) * 2:
        raise ValueError(f"the load answer has {len(pixels)} bytes of pixels, not "
                         f"{width}x{height} {layout} uint16")
    image = np.frombuffer(pixels, dtype="<u2").reshape(shape)
    record = result.get("record") if isinstance(result.get("record"), Mapping) else {}
    number = record.get("number") if isinstance(record.get("number"), int) else 0
    header = {"seq": number, "width": width, "height": height, "layout": layout,
              "kind": "stack", "meta": {"session": record.get("session"),
                                        "segment": record.get("segment"),
                                        "saved_file": result.get("file")}}
    return StackMessage(header=header, image=image, received=time.monotonic())


class HistoryPanel(QGroupBox):
    """The list of saved stacks, "Open" and "Back to live"."""

    #: Emitted with a control request (``history`` or ``load``).
    requested = Signal(dict)
    #: Emitted with a saved stack to show (a StackMessage), or None to go back to live.
    reopen = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Stack history", parent)
        self.list = QListWidget()
        self.list.setMaximumHeight(LIST_HEIGHT_PX)
        self.list.itemDoubleClicked.connect(lambda _item: self.open_selected())
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open_selected)
        self.live_button = QPushButton("Back to live")
        self.live_button.setEnabled(False)
        self.live_button.clicked.connect(self.back_to_live)
        self.info_label = QLabel("no stack saved yet")
        self.info_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.live_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        layout.addWidget(self.info_label)
        self.records: list[dict[str, Any]] = []
        self._saves: Any = None
        self.showing: str | None = None  # the file re-opened, or None for live

    def show_status(self, status: Mapping[str, Any]) -> None:
        """Ask for the list again when the daemon's count of saves changed."""
        output = status.get("output")
        saves = output.get("saves") if isinstance(output, Mapping) else None
        if saves != self._saves:
            self._saves = saves
            self.requested.emit({"cmd": "history"})

    def show_reply(self, reply: Reply) -> None:
        """Take a ``history`` or ``load`` answer."""
        cmd = reply.request.get("cmd")
        if not reply.ok:
            self.info_label.setText(f"{cmd}: {reply.error}")
            return
        result = reply.result if isinstance(reply.result, Mapping) else {}
        if cmd == "history":
            stacks = result.get("stacks")
            self.records = [r for r in stacks if isinstance(r, dict)] if isinstance(
                stacks, list) else []
            selected = self.list.currentRow()
            self.list.clear()
            for record in self.records:
                item = QListWidgetItem(describe_record(record))
                item.setToolTip(str(record.get("file", "")))
                self.list.addItem(item)
            if self.records:
                self.list.setCurrentRow(selected if 0 <= selected < len(self.records)
                                        else len(self.records) - 1)
                if self.showing is None:
                    self.info_label.setText(f"{len(self.records)} stacks saved")
            return
        try:
            stack = stack_from_load(result)
        except ValueError as exc:
            self.info_label.setText(f"load: {exc}")
            return
        self.showing = str(result.get("file"))
        self.live_button.setEnabled(True)
        self.info_label.setText(f"showing {self.showing} (saved; the live stack is not shown)")
        self.reopen.emit(stack)

    def open_selected(self) -> None:
        """Ask the daemon for the selected stack's pixels."""
        row = self.list.currentRow()
        if not 0 <= row < len(self.records):
            self.info_label.setText("select a saved stack first")
            return
        self.requested.emit({"cmd": "load", "file": str(self.records[row].get("file"))})

    def back_to_live(self) -> None:
        """Show the live stack again."""
        self.showing = None
        self.live_button.setEnabled(False)
        self.info_label.setText(f"{len(self.records)} stacks saved")
        self.reopen.emit(None)
