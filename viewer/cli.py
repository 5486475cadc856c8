"""``live-stack view``: show a daemon's live stack and control it.

::

    live-stack view [ENDPOINT] [--control ENDPOINT] [--keys DIR] [--ap-grid]
                    [--screenshot FILE.png [--timeout S]] [--size WxH]

With ``--screenshot`` the viewer waits for the first stack (and status), saves a picture
of its window and exits: 0 when saved, 1 when no stack came within ``--timeout`` seconds
or the file could not be written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Qt is imported only when the command runs
    from viewer.window import MainWindow

#: Size of the window when none is given, in pixels.
DEFAULT_SIZE = (1600, 1000)

#: Default seconds to wait for a stack before --screenshot gives up.
DEFAULT_SCREENSHOT_TIMEOUT_S = 60.0

#: Seconds a screenshot waits for a status after the first stack (so the panels are filled).
STATUS_GRACE_S = 3.0

#: Milliseconds given to the layout to settle before the window is grabbed.
SETTLE_MS = 300

#: Port of the control socket assumed when only the publisher's endpoint is given, until
#: the daemon's first status announces its control endpoint.
DEFAULT_CONTROL_PORT = 5557


@dataclasses.dataclass(frozen=True)
class ScreenshotParams:
    """What ``--screenshot`` saves and how long it waits."""

    # PNG (or other Qt image format, by extension) to write.
    path: Path
    # Seconds to wait for the first stack before giving up.
    timeout_s: float = DEFAULT_SCREENSHOT_TIMEOUT_S
    # Seconds to wait for a status once the stack is there.
    status_grace_s: float = STATUS_GRACE_S
    # Seconds to keep showing what arrives after the first stack before the picture is
    # taken (so that the graphs have filled), on top of the layout's settling.
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path) or not self.path.suffix:
            raise ValueError(f"path must be an image file name like view.png, got {self.path!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not self.status_grace_s >= 0:
            raise ValueError(f"status_grace_s must be >= 0, got {self.status_grace_s!r}")
        if not self.delay_s >= 0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")


def control_endpoint_for(publish_endpoint: str) -> str:
    """The control endpoint on the same host as ``publish_endpoint`` (default port).

    ``tcp://host:5556`` gives ``tcp://host:5557``; other transports give the default
    loopback control endpoint.
    """
    from viewer.link import DEFAULT_CONTROL_ENDPOINT

    if not publish_endpoint.startswith("tcp://") or ":" not in publish_endpoint[6:]:
        return DEFAULT_CONTROL_ENDPOINT
    host = publish_endpoint[6:].rsplit(":", 1)[0]
    return f"tcp://{host}:{DEFAULT_CONTROL_PORT}"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``live-stack view``."""
    from daemon.security import add_client_arguments
    from viewer.link import DEFAULT_PUBLISH_ENDPOINT

    p = argparse.ArgumentParser(
        prog="live-stack view",
        description="Show a live-stack daemon's latest stack, quality and state, and control it.",
    )
    p.add_argument(
        "endpoint", nargs="?", default=DEFAULT_PUBLISH_ENDPOINT,
        help=f"the daemon's publisher (default {DEFAULT_PUBLISH_ENDPOINT})",
    )
    p.add_argument(
        "--control", metavar="ENDPOINT",
        help="the daemon's control socket (default: the one the daemon announces in its "
        f"status, on the publisher's host; port {DEFAULT_CONTROL_PORT} until it does)",
    )
    add_client_arguments(p)  # --keys DIR, --server-key, --client-key
    p.add_argument(
        "--control-timeout", metavar="S", type=_positive, default=3.0,
        help="seconds to wait for the daemon to answer a control request (default 3)",
    )
    p.add_argument(
        "--screenshot", metavar="FILE.png", type=Path,
        help="save a picture of the window once the first stack has arrived, then exit",
    )
    p.add_argument(
        "--timeout", metavar="S", type=_positive, default=DEFAULT_SCREENSHOT_TIMEOUT_S,
        help=f"with --screenshot: give up (exit 1) if no stack arrives within S seconds "
        f"(default {DEFAULT_SCREENSHOT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--screenshot-delay", metavar="S", type=float, default=0.0,
        help="with --screenshot: keep showing what arrives for S seconds after the first "
        "stack before taking the picture (default 0)",
    )
    p.add_argument(
        "--ap-grid", action="store_true",
        help="start with the AP grid drawn over the stack",
    )
    p.add_argument(
        "--size", metavar="WxH", type=_size, default=DEFAULT_SIZE,
        help=f"window size in pixels (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})",
    )
    return p


def key_files(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The CURVE key files given by ``--keys`` or ``--server-key``/``--client-key``.

    Raises
    ------
    ValueError
        If both ways are used, only one of the two files is given, or the folder is
        missing.
    """
    from viewer.link import key_files_in

    server, client = args.server_key or None, args.client_key or None
    if args.keys:
        if server or client:
            raise ValueError("give either --keys or --server-key/--client-key, not both")
        return key_files_in(args.keys)
    if bool(server) != bool(client):
        raise ValueError("--server-key and --client-key must be given together")
    return (Path(server), Path(client)) if server else (None, None)


class ScreenshotTaker:
    """Saves ``window`` to ``params.path`` once a stack (and a status) is shown.

    Calls ``done(exit_code, message)`` once: 0 after saving, 1 when no stack came within
    ``params.timeout_s`` or the file cannot be written. A stack shown before any status
    waits up to ``params.status_grace_s`` for one, so that the panels are filled.
    """

    def __init__(self, window: MainWindow, params: ScreenshotParams,
                 done: Callable[[int, str], None]) -> None:
        from PySide6.QtCore import QTimer

        self.window = window
        self.params = params
        self._done = done
        self._finished = False
        self._armed = False  # a stack was shown: the shot is coming
        self._grace = QTimer(window)
        self._grace.setSingleShot(True)
        self._grace.timeout.connect(self._settle)
        window.stack_shown.connect(self._on_stack)
        window.status_shown.connect(self._on_status)
        QTimer.singleShot(round(params.timeout_s * 1000), window, self._on_timeout)

    def _on_stack(self, _seq: int) -> None:
        if self._armed:
            return
        self._armed = True
        if self.window.last_status is not None:
            self._settle()
        else:
            self._grace.start(round(self.params.status_grace_s * 1000))

    def _on_status(self) -> None:
        if self._grace.isActive():
            self._grace.stop()
            self._settle()

    def _settle(self) -> None:
        from PySide6.QtCore import QTimer

        QTimer.singleShot(SETTLE_MS + round(self.params.delay_s * 1000), self.window,
                          self._shoot)

    def _shoot(self) -> None:
        if self._finished:
            return
        self.window.stack_view.fit()
        self.window.check_health()
        pixmap = self.window.grab()
        if pixmap.isNull() or not pixmap.save(str(self.params.path)):
            self._finish(1, f"could not write the screenshot to {self.params.path}")
        else:
            self._finish(0, f"saved {self.params.path} ({pixmap.width()}x{pixmap.height()})")

    def _on_timeout(self) -> None:
        if not self._armed:
            endpoint = self.window.link.params.publish_endpoint
            why = ""
            status = self.window.last_status
            diagnosis = status.get("diagnosis") if isinstance(status, dict) else None
            if isinstance(diagnosis, dict) and diagnosis.get("text"):
                why = f"; the daemon says: {diagnosis['text']}"
            self._finish(1, f"no stack arrived from {endpoint} within "
                            f"{self.params.timeout_s:g} s{why}")

    def _finish(self, code: int, message: str) -> None:
        if not self._finished:
            self._finished = True
            self._done(code, message)


class _SignalWaker:
    """Lets SIGINT/SIGTERM quit the Qt event loop (Python handlers run only when woken)."""

    def __init__(self, quit_: Callable[[], None]) -> None:
        from PySide6.QtCore import QSocketNotifier

        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno())
        self._previous = {
            s: signal.signal(s, lambda *_: quit_()) for s in (signal.SIGINT, signal.SIGTERM)
        }
        self._notifier = QSocketNotifier(self._read.fileno(), QSocketNotifier.Type.Read)
        self._notifier.activated.connect(self._drain)

    def _drain(self) -> None:
        try:
            self._read.recv(64)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._notifier.setEnabled(False)
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._read.close()
        self._write.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``live-stack view``; return the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    shot = None
    if args.screenshot is not None:
        try:
            shot = ScreenshotParams(path=args.screenshot, timeout_s=args.timeout,
                                    delay_s=args.screenshot_delay)
        except ValueError as exc:
            print(f"live-stack view: --screenshot: {exc}", file=sys.stderr)
            return 2
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from viewer.binding_check import check_binding
    from viewer.link import DaemonLink, LinkParams
    from viewer.window import MainWindow, WindowParams

    try:
        check_binding()
    except RuntimeError as exc:
        print(f"live-stack view: {exc}", file=sys.stderr)
        return 2
    try:
        server_key, client_key = key_files(args)
        link_params = LinkParams(
            publish_endpoint=args.endpoint,
            control_endpoint=args.control or control_endpoint_for(args.endpoint),
            follow_announced_control=args.control is None,
            server_key=server_key,
            client_key=client_key,
            control_timeout_s=args.control_timeout,
        )
        link = DaemonLink(link_params)
    except ValueError as exc:
        print(f"live-stack view: {exc}", file=sys.stderr)
        return 2

    app = QApplication.instance() or QApplication(["live-stack view"])
    window = MainWindow(link, WindowParams())
    window.resize(*args.size)
    window.stack_view.grid_box.setChecked(args.ap_grid)
    outcome = {"code": 0, "message": ""}

    def done(code: int, message: str) -> None:
        outcome.update(code=code, message=message)
        window.close()
        app.quit()

    waker = _SignalWaker(app.quit)
    try:
        # (kept referenced while the event loop runs)
        _taker = None if shot is None else ScreenshotTaker(window, shot, done)
        window.show()
        try:
            link.start()
        except ValueError as exc:
            print(f"live-stack view: {exc}", file=sys.stderr)
            return 2
        app.exec()
    finally:
        window.close()
        link.stop()
        waker.close()
    if outcome["message"]:
        print(f"live-stack view: {outcome['message']}",
              file=sys.stderr if outcome["code"] else sys.stdout)
    return int(outcome["code"])


#: This package's sub-command for ``live-stack`` (see ``live_stack.cli``; pyproject.toml
#: declares the table in the entry-point group ``live_stack.commands``).
COMMANDS: dict[str, tuple[str, str]] = {
    "view": ("viewer.cli:main", "show a daemon's live stack and control it"),
}
