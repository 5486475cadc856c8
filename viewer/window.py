"""The viewer's main window: stack, quality, daemon state, controls and the banner."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from viewer.camera_panel import CameraPanel
from viewer.control_panel import ControlPanel
from viewer.history_panel import HistoryPanel
from viewer.image_panel import StackView
from viewer.link import DaemonLink, Inbox, Reply, StackMessage
from viewer.quality_panel import QualityPanel
from viewer.raw_panel import RawPanel
from viewer.state_panel import StatePanel

#: Look of the "daemon unreachable" banner.
BANNER_STYLE = "background: #b71c1c; color: white; font-weight: bold; padding: 6px;"

#: Look of the daemon's diagnosis (why nothing is stacked): a fault, and a passing state.
FAULT_STYLE = "background: #e65100; color: white; font-weight: bold; padding: 6px;"
NOTE_STYLE = "background: #455a64; color: white; padding: 6px;"


@dataclasses.dataclass(frozen=True)
class WindowParams:
    """How the window judges and shows the link's health."""

    # Seconds without a status message after which the daemon counts as unreachable.
    stale_after_s: float = 3.0
    # Seconds between two checks of the link's health (and updates of the ages shown).
    check_interval_s: float = 0.5
    # Frames kept in the quality graph.
    quality_history: int = 2000

    def __post_init__(self) -> None:
        if not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0, got {self.stale_after_s!r}")
        if not 0 < self.check_interval_s <= self.stale_after_s:
            raise ValueError(
                f"check_interval_s must be in (0, stale_after_s], got {self.check_interval_s!r}"
            )
        if not isinstance(self.quality_history, int) or self.quality_history < 1:
            raise ValueError(
                f"quality_history must be an integer >= 1, got {self.quality_history!r}"
            )


def stack_key(stack: StackMessage) -> tuple[object, ...]:
    """What identifies a published stack: the daemon's session, the segment and ``seq``."""
    meta = stack.header.get("meta", {})
    return (meta.get("session"), meta.get("segment"), stack.header["seq"])


class MainWindow(QMainWindow):
    """Everything the viewer shows, fed by a :class:`~viewer.link.DaemonLink`.

    The window connects to the link's ``arrived`` signal; the caller starts the link (and
    the window stops it when closed).

    Parameters
    ----------
    link : DaemonLink
        Where stacks, statuses and replies come from and requests go.
    params : WindowParams
        Health-check timing and history length.
    """

    #: Emitted with the sequence number of each stack put on screen.
    stack_shown = Signal(int)
    #: Emitted after the status maps of one wake-up have been shown.
    status_shown = Signal()
    #: Emitted with the frame's sequence number once a raw-frame preview is on screen.
    preview_shown = Signal(int)

    def __init__(self, link: DaemonLink, params: WindowParams | None = None) -> None:
        super().__init__()
        self.link = link
        self.params = params or WindowParams()
        self.setWindowTitle(f"live-stack view — {link.params.publish_endpoint}")

        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setStyleSheet(BANNER_STYLE)
        self.banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)

        self.diagnosis = QLabel()
        self.diagnosis.setObjectName("diagnosis")
        self.diagnosis.setWordWrap(True)
        self.diagnosis.setVisible(False)

        self.stack_view = StackView()
        self.raw_panel = RawPanel()
        self.state_panel = StatePanel()
        self.control_panel = ControlPanel()
        self.camera_panel = CameraPanel()
        self.history_panel = HistoryPanel()
        self.quality_panel = QualityPanel(self.params.quality_history)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.state_panel)
        side_layout.addWidget(self.control_panel)
        side_layout.addWidget(self.camera_panel)
        side_layout.addWidget(self.history_panel)
        side_layout.addStretch(1)

        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.stack_view)
        top.addWidget(self.raw_panel)
        # the side column scrolls rather than make the window taller than the screen
        side_scroll = QScrollArea()
        side_scroll.setWidget(side)
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QFrame.Shape.NoFrame)
        side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        side_scroll.setMinimumWidth(side.sizeHint().width())
        top.addWidget(side_scroll)
        top.setStretchFactor(0, 3)
        top.setStretchFactor(1, 2)
        top.setStretchFactor(2, 1)
        main = QSplitter(Qt.Orientation.Vertical)
        main.addWidget(top)
        main.addWidget(self.quality_panel)
        main.setStretchFactor(0, 3)
        main.setStretchFactor(1, 1)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(self.banner)
        layout.addWidget(self.diagnosis)
        layout.addWidget(main, 1)
        self.setCentralWidget(central)

        self.stacks_shown = 0
        self.stale_stacks = 0
        self.bad_messages = 0
        self.last_status: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._last_status_at: float | None = None
        self._last_stack_at: float | None = None
        self._last_seq: int | None = None
        self._last_error = ""
        self._last_stack_key: tuple[object, ...] | None = None
        self._live_stack: StackMessage | None = None  # the newest live stack received

        self.stack_view.stack_shown.connect(self.stack_shown)
        self.control_panel.requested.connect(self.send_request)
        self.camera_panel.requested.connect(self.send_request)
        self.history_panel.requested.connect(self.send_request)
        self.history_panel.reopen.connect(self._reopen)
        link.arrived.connect(self._take)
        #: Set when the window closes: what the network thread queued before is dropped
        #: (a status applied then could make a panel send a request on a stopped link).
        self._closed = False
        self._health = QTimer(self)
        self._health.setInterval(round(self.params.check_interval_s * 1000))
        self._health.timeout.connect(self.check_health)
        self._health.start()

    @property
    def daemon_reachable(self) -> bool:
        """Whether a status arrived within the last ``stale_after_s`` seconds."""
        return not self.banner.isVisible()

    def check_health(self) -> None:
        """Show or hide the banner from the age of the last status; refresh the ages."""
        now = time.monotonic()
        since = self._last_status_at if self._last_status_at is not None else self._started
        age = now - since
        endpoint = self.link.params.publish_endpoint
        if age > self.params.stale_after_s:
            if self._last_status_at is None:
                text = f"No daemon at {endpoint}: nothing received for {age:.0f} s. Still trying…"
            else:
                text = (
                    f"Daemon at {endpoint} not reachable: no status for {age:.0f} s. "
                    "Reconnecting…"
                )
            self.banner.setText(text)
            self.banner.setVisible(True)
        else:
            self.banner.setVisible(False)
        self._show_link(now)

    def send_request(self, request: dict[str, Any]) -> None:
        """Send a control request; a request the daemon would refuse is shown as an error.
        After the window has closed, requests are dropped."""
        if self._closed:
            return
        try:
            self.link.request(request)
        except ValueError as exc:
            panel = self.camera_panel if request.get("cmd") == "camera" else self.control_panel
            panel.show_reply(Reply(dict(request), False, None, str(exc)))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self._closed = True
        self._health.stop()
        self.link.stop()
        super().closeEvent(event)

    def _take(self) -> None:
        if self._closed:
            return
        inbox = self.link.take()
        self._apply(inbox)

    def _apply(self, inbox: Inbox) -> None:
        now = time.monotonic()
        self.stale_stacks += inbox.stale_stacks
        self.bad_messages += inbox.bad_messages
        self._last_error = inbox.last_error or self._last_error
        for reply in inbox.replies:
            if reply.request.get("cmd") == "camera":
                self.camera_panel.show_reply(reply)
            elif reply.request.get("cmd") in ("history", "load"):
                self.history_panel.show_reply(reply)
            else:
                self.control_panel.show_reply(reply)
        if inbox.statuses:
            for status in inbox.statuses:
                self.quality_panel.add_recent(status.get("recent"))
            status = inbox.statuses[-1]
            self.last_status = status
            self._last_status_at = now
            self.state_panel.show_status(status)
            self.quality_panel.show_quality(status.get("quality"))
            self.control_panel.show_state(status.get("state"))
            self.control_panel.show_params(status.get("params"))
            self.show_diagnosis(status.get("diagnosis"))
            self.camera_panel.show_cameras(status.get("camera"))
            self.history_panel.show_status(status)
            self.banner.setVisible(False)
        if inbox.stack is not None and self._is_new(inbox.stack):
            self._live_stack = inbox.stack
            if self.history_panel.showing is None:
                self.stack_view.show_stack(inbox.stack)
            self.stacks_shown += 1
            self._last_stack_at = now
            self._last_seq = int(inbox.stack.header["seq"])
            self._last_stack_key = stack_key(inbox.stack)
            if not inbox.statuses:
                stats = inbox.stack.header["meta"].get("stats")
                if isinstance(stats, dict):
                    self.quality_panel.show_quality(stats.get("quality"))
        if inbox.preview is not None:
            self.raw_panel.show_preview(inbox.preview)
            self.preview_shown.emit(int(inbox.preview.header["seq"]))
        self._show_link(now)
        if inbox.statuses:
            self.status_shown.emit()

    def show_diagnosis(self, diagnosis: Any) -> None:
        """Show the daemon's reason why frames do not reach the stack (hidden when none)."""
        text = diagnosis.get("text") if isinstance(diagnosis, dict) else None
        if not isinstance(text, str) or not text:
            self.diagnosis.setVisible(False)
            return
        self.diagnosis.setText(text)
        self.diagnosis.setStyleSheet(FAULT_STYLE if diagnosis.get("fault") else NOTE_STYLE)
        self.diagnosis.setVisible(True)

    def _reopen(self, stack: StackMessage | None) -> None:
        """Show a saved stack (from the history) instead of the live one, or (None) the
        live one again."""
        if stack is not None:
            self.stack_view.show_stack(stack)
            self.stack_view.info_label.setText(
                f"saved {stack.header['meta'].get('saved_file')}  "
                f"{stack.header['width']}x{stack.header['height']}")
        elif self._live_stack is not None:
            self.stack_view.show_stack(self._live_stack)

    def _is_new(self, stack: StackMessage) -> bool:
        """False for the stack on screen sent again (to a viewer that subscribed late)."""
        return stack_key(stack) != self._last_stack_key

    def _show_link(self, now: float) -> None:
        if self._last_stack_at is None:
            self.state_panel.set_text("stack", "none yet")
        else:
            self.state_panel.set_text(
                "stack",
                f"#{self._last_seq}, received {now - self._last_stack_at:.1f} s ago"
                + (f" ({self.stale_stacks} skipped)" if self.stale_stacks else ""),
            )
        if self._last_status_at is None:
            text = "waiting for the daemon"
        else:
            text = f"last status {now - self._last_status_at:.1f} s ago"
        if self.bad_messages:
            text += f"; {self.bad_messages} bad messages (last: {self._last_error})"
        self.state_panel.set_text("link", text)
