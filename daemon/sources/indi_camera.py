"""The INDI source's end of camera control: a DEALER on the daemon's control socket.

:class:`CameraChannel` runs one thread that owns the DEALER socket (see
:mod:`daemon.camera` for the exchange): it announces the camera's settings
(``camera_hello``) when told and every :data:`~daemon.camera.HELLO_INTERVAL` seconds,
passes the daemon's ``camera_set`` commands to the controller (a queue, and a call that
wakes the controller's wait), and sends the controller's answers back. The controller
talks to the thread through an inproc pipe, so that each socket has one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from daemon import protocol
from daemon.camera import HELLO_INTERVAL

log = logging.getLogger("live_stack.source.indi")

#: Seconds the channel's thread is given to finish at close.
CLOSE_TIMEOUT = 2.0


class CameraChannel:
    """Camera commands from the daemon, answers and announcements to it.

    Parameters
    ----------
    context : zmq.Context
    endpoint : str
        The daemon's control endpoint.
    source_id : str
        The name the source pushes its frames with (how the viewer tells sources apart).
    wake : callable
        Called (from the channel's thread) when a command arrives, to wake the
        controller's wait.
    curve : daemon.security.ClientCurve, optional
        CURVE keys for a daemon beyond loopback.
    """

    def __init__(self, context: zmq.Context, endpoint: str, *, source_id: str,
                 wake: Callable[[], None], curve: Any = None) -> None:
        from daemon.security import apply_client_curve

        self.source_id = source_id
        self._wake = wake
        self._commands: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._dealer = context.socket(zmq.DEALER)
        self._dealer.linger = 0
        apply_client_curve(self._dealer, curve)
        self._dealer.connect(endpoint)
        address = f"inproc://indi-camera-{id(self):x}"
        self._inner = context.socket(zmq.PAIR)
        self._inner.linger = 0
        self._inner.bind(address)
        self._pipe = context.socket(zmq.PAIR)  # the controller's end
        self._pipe.linger = 0
        self._pipe.connect(address)
        self._thread = threading.Thread(target=self._run, name="camera-channel", daemon=True)
        self._thread.start()

    # --- the controller's side ----------------------------------------------------------

    def commands(self) -> list[dict[str, Any]]:
        """The ``camera_set`` commands received since the last call (oldest first)."""
        out = []
        while True:
            try:
                out.append(self._commands.get_nowait())
            except queue.Empty:
                return out

    def pending(self) -> bool:
        """Whether a command waits."""
        return not self._commands.empty()

    def announce(self, state: dict[str, Any]) -> None:
        """Tell the daemon the camera's current settings (now and every few seconds)."""
        self._pipe.send_multipart([b"hello", protocol.pack(state)])

    def answer(self, ident: int, result: dict[str, Any]) -> None:
        """Answer the command ``ident`` with ``{applied, refused, state}``."""
        self._pipe.send_multipart([b"result", protocol.pack({"id": ident, "result": result})])

    def close(self) -> None:
        """Stop the thread and close the sockets."""
        self._pipe.send_multipart([b"stop", b""])
        self._thread.join(CLOSE_TIMEOUT)
        self._pipe.close(linger=0)

    # --- the channel's thread -----------------------------------------------------------

    def _send(self, request: dict[str, Any]) -> None:
        try:
            self._dealer.send_multipart([b"", protocol.encode_request(**request)], zmq.NOBLOCK)
        except zmq.Again:  # no daemon connected yet: the next announcement will do
            pass

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._inner, zmq.POLLIN)
        state: dict[str, Any] | None = None
        next_hello = time.monotonic() + HELLO_INTERVAL
        try:
            while True:
                wait = max(0.0, next_hello - time.monotonic())
                events = dict(poller.poll(wait * 1000))
                if self._inner in events:
                    kind, body = self._inner.recv_multipart()
                    if kind == b"stop":
                        return
                    data = protocol.unpack(body, what="camera message")
                    if kind == b"hello":
                        state = data
                        next_hello = 0.0  # at once
                    else:
                        self._send({"cmd": "camera_result", **data})
                if self._dealer in events:
                    self._on_daemon(self._dealer.recv_multipart())
                if state is not None and time.monotonic() >= next_hello:
                    self._send({"cmd": "camera_hello", "source": self.source_id,
                                "state": state})
                    next_hello = time.monotonic() + HELLO_INTERVAL
                elif state is None:
                    next_hello = time.monotonic() + HELLO_INTERVAL
        finally:
            self._dealer.close(linger=0)
            self._inner.close(linger=0)

    def _on_daemon(self, parts: list[bytes]) -> None:
        body = parts[-1]
        try:
            message = protocol.unpack(body, what="daemon's camera message")
        except protocol.ProtocolError as exc:
            log.warning("camera control: %s", exc)
            return
        if message.get("cmd") == "camera_set" and isinstance(message.get("id"), int) \
                and isinstance(message.get("settings"), dict):
            self._commands.put(message)
            self._wake()
        elif "ok" in message and not message["ok"]:  # the daemon refused what we sent
            log.warning("camera control: the daemon answered: %s", message.get("error"))
