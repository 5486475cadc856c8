"""Fixtures for the viewer tests: offscreen Qt, a stand-in publisher/control server, windows.

Qt runs on the offscreen platform (set before Qt is imported). The stand-in daemon
(:class:`StandIn`) speaks the wire protocol over real loopback sockets; it is used for
the parts that need a daemon that misbehaves on purpose (malformed replies, silence).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import zmq  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402

from daemon import protocol  # noqa: E402
from viewer.binding_check import check_binding  # noqa: E402
from viewer.link import DaemonLink, LinkParams  # noqa: E402
from viewer.window import MainWindow, WindowParams  # noqa: E402

#: Milliseconds between two publications of the stand-in (statuses, stacks).
PUBLISH_INTERVAL_MS = 50

#: Seconds any wait in these tests may take before failing.
WAIT_S = 10.0
WAIT_MS = int(WAIT_S * 1000)

#: A control reply handler: request map -> raw reply bytes (None: never answer).
Handler = Callable[[dict[str, Any]], "bytes | None"]


def ok_handler(request: dict[str, Any]) -> bytes:
    """Answer every request with ok and the request's command as the result."""
    return protocol.pack({"ok": True, "result": {"cmd": request.get("cmd")}})


class StandIn:
    """A publisher and a control server on random loopback ports.

    The PUB socket is used from the test's (GUI) thread only: a QTimer re-publishes the
    current stack and status every :data:`PUBLISH_INTERVAL_MS`, which also covers the
    subscription's join delay. The control socket is a ROUTER served by a thread, so a
    handler can leave a request unanswered (a REQ client then times out).
    """

    def __init__(self, context: zmq.Context, handler: Handler = ok_handler) -> None:
        self.context = context
        self.handler = handler
        self.pub: zmq.Socket | None = None
        self.pub_port = 0
        self._bind_pub()
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = 0
        self.control_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.requests: list[dict[str, Any]] = []
        self._stop = context.socket(zmq.PAIR)
        self._stop.linger = 0
        self._stop.bind(f"inproc://standin-{id(self)}")
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.stack: np.ndarray | None = None
        self.meta: dict[str, Any] = {"stats": {}, "ap_centres": [], "ap_size": 0}
        self.status: dict[str, Any] | None = None
        self.seq = 0
        self.timer = QTimer()
        self.timer.setInterval(PUBLISH_INTERVAL_MS)
        self.timer.timeout.connect(self.publish)
        self.timer.start()

    @property
    def link_params(self) -> LinkParams:
        return LinkParams(
            publish_endpoint=f"tcp://127.0.0.1:{self.pub_port}",
            control_endpoint=f"tcp://127.0.0.1:{self.control_port}",
            control_timeout_s=1.0,
        )

    def _bind_pub(self) -> None:
        self.pub = self.context.socket(zmq.PUB)
        self.pub.linger = 0
        if self.pub_port:
            self.pub.bind(f"tcp://127.0.0.1:{self.pub_port}")
        else:
            self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")

    def go_silent(self) -> None:
        """Close the publisher, as a stopped daemon would."""
        assert self.pub is not None
        self.pub.close(linger=0)
        self.pub = None

    def come_back(self) -> None:
        """Bind the publisher again on the same port."""
        self._bind_pub()

    def publish(self) -> None:
        if self.pub is None:
            return
        if self.stack is not None:
            self.seq += 1
            parts = protocol.encode_image(self.stack, kind="stack", seq=self.seq, meta=self.meta)
            self.pub.send_multipart([protocol.TOPIC_STACK, *parts])
        if self.status is not None:
            self.pub.send_multipart([protocol.TOPIC_STATUS, protocol.pack(self.status)])

    def send_raw(self, parts: list[bytes]) -> None:
        assert self.pub is not None
        self.pub.send_multipart(parts)

    def _serve(self) -> None:
        stop = self.context.socket(zmq.PAIR)
        stop.linger = 0
        stop.connect(f"inproc://standin-{id(self)}")
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if stop in events:
                    return
                identity, empty, body = self.router.recv_multipart()
                request = protocol.unpack(body)
                self.requests.append(request)
                answer = self.handler(request)
                if answer is not None:
                    self.router.send_multipart([identity, empty, answer])
        finally:
            stop.close()

    def close(self) -> None:
        self.timer.stop()
        self._stop.send(b"stop")
        self._thread.join(WAIT_S)
        self.router.close()
        self._stop.close()
        if self.pub is not None:
            self.pub.close()


@pytest.fixture(autouse=True)
def usable_qt_binding() -> None:
    """Fail (rather than abort the whole test run) on a PySide6 that corrupts None."""
    try:
        check_binding()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def standin(qapp, zmq_context) -> Iterator[StandIn]:
    s = StandIn(zmq_context)
    yield s
    s.close()


#: Window timing for tests: the banner after 1 s of silence, checked every 0.1 s.
FAST_WINDOW = WindowParams(stale_after_s=1.0, check_interval_s=0.1, quality_history=500)


@pytest.fixture
def open_window(qtbot) -> Iterator[Callable[..., MainWindow]]:
    """Factory: ``open_window(link_params)`` -> a shown MainWindow with its link started."""
    windows: list[MainWindow] = []

    def make(params: LinkParams, window_params: WindowParams = FAST_WINDOW) -> MainWindow:
        link = DaemonLink(params)
        window = MainWindow(link, window_params)
        qtbot.addWidget(window)
        window.resize(1500, 950)
        window.show()
        link.start()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        window.link.stop()
