"""Client side of the daemon's sockets: control requests and subscriptions.

Used by ``live-stack ctl``, the demo, the tests, the benchmarks and the viewer::

    from daemon.client import control_request, Subscriber

    reply = control_request("tcp://127.0.0.1:5557", "set", name="...", value=...)
    with Subscriber("tcp://127.0.0.1:5556") as sub:
        msg = sub.recv(timeout=2.0)      # Message(topic, header, image) or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from daemon import protocol
from daemon.config import DEFAULT_CONTROL, DEFAULT_PUBLISH
from daemon.security import ClientCurve, apply_client_curve

#: Seconds a control request waits for its reply by default.
DEFAULT_TIMEOUT = 5.0

#: Receive high-water mark of a subscriber (messages).
SUBSCRIBER_HWM = 16


class NoAnswer(TimeoutError):
    """No reply came from the daemon in time (not running, wrong endpoint or wrong keys)."""


def control_request(
    endpoint: str = DEFAULT_CONTROL,
    cmd: str = "status",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    curve: ClientCurve | None = None,
    context: zmq.Context | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Send one control request and return the decoded reply.

    Parameters
    ----------
    endpoint : str
        The daemon's control endpoint.
    cmd : str
        The command (``status``, ``reset``, ``set``, ``save``, ``pause``, ``resume``,
        ``shutdown``); ``set`` takes ``name=`` and ``value=``.
    timeout : float
        Seconds to wait for the reply.
    curve : ClientCurve, optional
        Keys for a daemon with CURVE on.
    context : zmq.Context, optional
        Context to use; a private one is made (and terminated) if not given.

    Returns
    -------
    dict
        ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": "..."}``.

    Raises
    ------
    ValueError
        If the request is not valid (checked before sending).
    NoAnswer
        If no reply came within ``timeout``.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    payload = protocol.encode_request(cmd, **fields)
    ctx = zmq.Context() if context is None else context
    sock = ctx.socket(zmq.REQ)
    try:
        sock.linger = 0
        apply_client_curve(sock, curve)
        sock.connect(endpoint)
        sock.send(payload)
        if not sock.poll(timeout * 1000, zmq.POLLIN):
            raise NoAnswer(
                f"no answer from a daemon at {endpoint} within {timeout:g} s "
                f"(is it running? are the endpoint and keys right?)"
            )
        return protocol.decode_reply(sock.recv())
    finally:
        sock.close(linger=0)
        if context is None:
            ctx.term()


@dataclass
class Message:
    """A message received from the daemon's publisher."""

    topic: str  # "stack", "preview" or "status"
    header: dict[str, Any]  # the image header (stack, preview) or the status map
    image: np.ndarray | None = None  # the pixels (stack: uint16; preview: as the frame)


class Subscriber:
    """A SUB socket on the daemon's publisher that decodes what it receives.

    Parameters
    ----------
    endpoint : str
        The daemon's publish endpoint.
    topics : sequence of bytes
        Topics to subscribe to.
    curve : ClientCurve, optional
        Keys for a daemon with CURVE on.
    context : zmq.Context, optional
        Context to use; a private one is made (and terminated at close) if not given.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_PUBLISH,
        *,
        topics: tuple[bytes, ...] = (protocol.TOPIC_STACK, protocol.TOPIC_STATUS),
        curve: ClientCurve | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._own = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            self._sock.linger = 0
            self._sock.rcvhwm = SUBSCRIBER_HWM
            apply_client_curve(self._sock, curve)
            for topic in topics:
                self._sock.subscribe(topic)
            self._sock.connect(endpoint)
        except Exception:
            self.close()
            raise

    def recv(self, timeout: float) -> Message | None:
        """Wait up to ``timeout`` seconds for a message; None if none came.

        Raises
        ------
        daemon.protocol.ProtocolError
            If the message is malformed.
        """
        if not self._sock.poll(timeout * 1000, zmq.POLLIN):
            return None
        parts = self._sock.recv_multipart(copy=False)
        topic = bytes(parts[0].buffer)
        if topic == protocol.TOPIC_STATUS and len(parts) == 2:
            return Message("status", protocol.unpack(parts[1].buffer, what="status"))
        if topic in (protocol.TOPIC_STACK, protocol.TOPIC_PREVIEW):
            header, image = protocol.decode_image(parts[1:])
            return Message(topic.decode(), header, image)
        raise protocol.ProtocolError(f"unexpected message with topic {topic!r}, "
                                     f"{len(parts)} parts")

    def close(self) -> None:
        """Close the socket (and the private context)."""
        self._sock.close(linger=0)
        if self._own:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
