"""The viewer's link to a daemon: a network thread that owns every ZeroMQ socket.

The user interface never touches the network. A :class:`DaemonLink` starts one thread
that

- subscribes to the daemon's publisher and keeps only the *newest* stack and raw-frame
  preview (stale ones are dropped, never queued) and the status maps received since the
  UI last looked;
- sends control requests (queued by the UI, one at a time, as a REQ socket must) and
  waits for each answer with a timeout; a REQ socket whose answer did not come is
  closed and made anew, since it can neither send nor receive any more.

The thread wakes the UI with a Qt signal only when there is something new and the UI has
not been woken for it yet, so a slow UI sees one wake-up carrying the latest data instead
of a backlog.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PySide6.QtCore import QObject, Signal

from daemon import protocol, security

log = logging.getLogger(__name__)

#: Default endpoints of a daemon on the same machine (see docs/contracts.md).
DEFAULT_PUBLISH_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"

#: File names inside a ``--keys`` directory (``zmq.auth`` certificate files, as made by
#: ``live-stack keys DIR``): the client's key pair and the server's public key.
CLIENT_SECRET_FILE = "client.key_secret"
SERVER_PUBLIC_FILE = "server.key"

#: Messages taken off the subscriber in one go before the UI is handed the newest; bounds
#: the time the thread spends draining a flood.
_DRAIN_LIMIT = 256

#: Status maps kept for the UI between two of its wake-ups (older ones are dropped).
_STATUS_BACKLOG = 64

#: Seconds :meth:`DaemonLink.stop` waits for the network thread to finish.
STOP_TIMEOUT_S = 5.0

_STOP = b"stop"
_REQUEST = b"request"


@dataclasses.dataclass(frozen=True)
class LinkParams:
    """How the viewer reaches a daemon."""

    # ZeroMQ endpoint of the daemon's publisher (stack and status messages).
    publish_endpoint: str = DEFAULT_PUBLISH_ENDPOINT
    # ZeroMQ endpoint of the daemon's control REP socket.
    control_endpoint: str = DEFAULT_CONTROL_ENDPOINT
    # CURVE: the daemon's public key file (server.key) and this client's secret key
    # file (client.key_secret), both or neither; None for plain TCP.
    server_key: Path | None = None
    client_key: Path | None = None
    # Seconds to wait for the answer to one control request before giving up on it.
    control_timeout_s: float = 3.0
    # Largest number of whole messages the subscriber buffers; the network thread drains
    # it continuously, so this only bounds memory (a 4k stack is 16 MiB) under a flood.
    receive_hwm: int = 8
    # True: control_endpoint is a first guess, replaced by the control endpoint the
    # daemon announces in its status (endpoints.control), on the publisher's host.
    follow_announced_control: bool = False

    def __post_init__(self) -> None:
        for name in ("publish_endpoint", "control_endpoint"):
            value = getattr(self, name)
            if not isinstance(value, str) or "://" not in value:
                raise ValueError(
                    f"{name} must be a ZeroMQ endpoint like tcp://host:port, got {value!r}"
                )
        for name in ("server_key", "client_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                raise ValueError(f"{name} must be a pathlib.Path or None, got {value!r}")
        if (self.server_key is None) != (self.client_key is None):
            raise ValueError("server_key and client_key must be given together")
        if not self.control_timeout_s > 0:
            raise ValueError(f"control_timeout_s must be > 0, got {self.control_timeout_s!r}")
        if not isinstance(self.receive_hwm, int) or self.receive_hwm < 1:
            raise ValueError(f"receive_hwm must be an integer >= 1, got {self.receive_hwm!r}")
        if not isinstance(self.follow_announced_control, bool):
            raise ValueError("follow_announced_control must be a bool, "
                             f"got {self.follow_announced_control!r}")


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """The key material a CURVE client needs (Z85-encoded, as ``zmq.auth`` stores it)."""

    # This client's public key.
    public: bytes
    # This client's secret key.
    secret: bytes
    # The daemon's public key.
    server: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client of the daemon (before it connects)."""
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        socket.curve_serverkey = self.server


def key_files_in(keys_dir: Path) -> tuple[Path, Path]:
    """The ``(server public, client secret)`` key files of a ``live-stack keys`` folder.

    Raises
    ------
    ValueError
        If the folder does not exist.
    """
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise ValueError(f"keys folder {keys_dir} does not exist (make one with 'live-stack keys')")
    return keys_dir / SERVER_PUBLIC_FILE, keys_dir / CLIENT_SECRET_FILE


def load_curve_keys(server_key: Path, client_key: Path) -> CurveKeys:
    """Read the daemon's public key and this client's key pair.

    Raises
    ------
    ValueError
        If a file is missing or holds no usable key; the message names the file.
    """
    server = security.load_public_key(server_key, what="server key")
    public, secret = security.load_key_pair(client_key, what="client key")
    return CurveKeys(public=public, secret=secret, server=server)


@dataclasses.dataclass(frozen=True)
class StackMessage:
    """A stack received from the daemon."""

    # The image header (see daemon.protocol); ``meta`` holds stats, ap_centres, ap_size.
    header: dict[str, Any]
    # The stack, uint16 (H, W) or (H, W, 3), read-only, sharing the message's buffer.
    image: np.ndarray
    # time.monotonic() when the message was taken off the socket.
    received: float


@dataclasses.dataclass(frozen=True)
class PreviewMessage:
    """A decimated raw frame received from the daemon (see daemon/preview.py)."""

    # The image header; ``meta`` holds the frame's size, the decimation, the levels
    # (histograms, clipped shares) and the focus figures.
    header: dict[str, Any]
    # The preview pixels, uint8 or uint16, (H, W) or (H, W, 3), read-only.
    image: np.ndarray
    # time.monotonic() when the message was taken off the socket.
    received: float


@dataclasses.dataclass(frozen=True)
class Reply:
    """The outcome of one control request."""

    # The request as sent ({"cmd": ..., ...}).
    request: dict[str, Any]
    # True when the daemon answered {"ok": true, ...}.
    ok: bool
    # The daemon's "result" when ok, else None.
    result: Any
    # Why the request failed (the daemon's "error", a timeout or a malformed answer);
    # empty when ok.
    error: str


@dataclasses.dataclass
class Inbox:
    """What arrived since the UI last looked (see :meth:`DaemonLink.take`)."""

    # The newest stack, or None.
    stack: StackMessage | None = None
    # The newest raw-frame preview, or None (older ones are dropped, never queued).
    preview: PreviewMessage | None = None
    # Status maps in arrival order (at most the last few dozen).
    statuses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Control replies in order.
    replies: list[Reply] = dataclasses.field(default_factory=list)
    # Stacks received but replaced by a newer one before the UI took them.
    stale_stacks: int = 0
    # Messages that did not follow the protocol.
    bad_messages: int = 0
    # What was wrong with the last of them.
    last_error: str = ""


def reachable_control(publish_endpoint: str, announced: str) -> str:
    """Where to reach the control socket a daemon announces, seen from this viewer.

    A TCP endpoint is reached on the host the viewer reaches the publisher on (the
    daemon announces what it bound, e.g. ``tcp://0.0.0.0:6001`` or its loopback
    address, which may not be how this machine reaches it), at the announced port;
    other transports (``ipc://``) are taken as announced.
    """
    if not (announced.startswith("tcp://") and publish_endpoint.startswith("tcp://")):
        return announced
    port = announced.rsplit(":", 1)[-1]
    host = publish_endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return f"tcp://{host}:{port}"


def describe_request(request: Mapping[str, Any]) -> str:
    """A short human-readable form of a control request, e.g. ``set ap_size=64``."""
    cmd = str(request.get("cmd", "?"))
    if cmd == "set":
        return f"set {request.get('name')}={request.get('value')!r}"
    return cmd


def parse_reply(data: bytes, request: Mapping[str, Any]) -> Reply:
    """Turn the bytes the control socket answered into a :class:`Reply`.

    A reply that is not a msgpack map with a boolean ``ok`` (and an ``error`` text when
    not ok) is reported as an error naming what was wrong.
    """
    req = dict(request)
    try:
        answer = protocol.unpack(data, what="control reply")
    except protocol.ProtocolError as exc:
        return Reply(req, False, None, str(exc))
    ok = answer.get("ok")
    if not isinstance(ok, bool):
        return Reply(req, False, None, f"control reply lacks a boolean 'ok': {answer!r}")
    if ok:
        return Reply(req, True, answer.get("result"), "")
    error = answer.get("error")
    if not isinstance(error, str) or not error:
        error = f"daemon refused without a reason: {answer!r}"
    return Reply(req, False, None, error)


def decode_stack(parts: list[Any], received: float) -> StackMessage:
    """Decode a ``[b"stack", header, pixels]`` message (topic already checked).

    Raises
    ------
    daemon.protocol.ProtocolError
        If the header or the pixel buffer is malformed or the stack is not uint16.
    """
    header, image = protocol.decode_image(parts[1:])
    if header["kind"] != "stack":
        raise protocol.ProtocolError(f"stack message has kind {header['kind']!r}, not 'stack'")
    if header["dtype"] != "uint16":
        raise protocol.ProtocolError(f"stack dtype is {header['dtype']!r}, expected 'uint16'")
    if header["layout"] not in ("mono", "rgb"):
        raise protocol.ProtocolError(f"stack layout is {header['layout']!r}, expected mono or rgb")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        header["meta"] = {}
    return StackMessage(header=header, image=image, received=received)


def decode_preview(parts: list[Any], received: float) -> PreviewMessage:
    """Decode a ``[b"preview", header, pixels]`` message (topic already checked).

    Raises
    ------
    daemon.protocol.ProtocolError
        If the header or pixels are malformed, or it is not a mono or RGB preview.
    """
    if len(parts) != 3:
        raise protocol.ProtocolError(f"preview message has {len(parts)} parts, expected 3")
    header, image = protocol.decode_image(parts[1:])
    if header["kind"] != "preview":
        raise protocol.ProtocolError(f"preview message has kind {header['kind']!r}")
    if header["layout"] not in ("mono", "rgb") or header["dtype"] not in ("uint8", "uint16"):
        raise protocol.ProtocolError(
            f"a preview is mono or rgb, uint8 or uint16; got {header['layout']} "
            f"{header['dtype']}")
    if not isinstance(header.get("meta"), dict):
        header["meta"] = {}
    return PreviewMessage(header=header, image=image, received=received)


class _Bridge(QObject):
    """Carries the network thread's wake-ups into the Qt event loop."""

    arrived = Signal()


class DaemonLink:
    """Receives a daemon's stacks and status and sends it control requests.

    Create it in the GUI thread, connect :attr:`arrived` (emitted in the GUI thread's
    event loop), call :meth:`start`, and on each ``arrived`` call :meth:`take`. Call
    :meth:`stop` before the application quits.

    Parameters
    ----------
    params : LinkParams
        Endpoints, keys and timeouts.

    Raises
    ------
    ValueError
        If CURVE key files are given but cannot be read.
    """

    def __init__(self, params: LinkParams) -> None:
        self.params = params
        self._keys = None
        if params.server_key is not None and params.client_key is not None:
            self._keys = load_curve_keys(params.server_key, params.client_key)
        self._bridge = _Bridge()
        self.arrived = self._bridge.arrived
        self._lock = threading.Lock()
        self._inbox = Inbox()
        self._woken = False
        self._context: zmq.Context | None = None
        self._pipe: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        #: the control endpoint in use (changes once if the daemon announces another)
        self.control_endpoint = params.control_endpoint

    # --- GUI-thread side -------------------------------------------------------------

    def start(self) -> None:
        """Create the sockets and start the network thread."""
        if self._thread is not None:
            raise RuntimeError("DaemonLink already started")
        self._context = zmq.Context()
        sockets: list[zmq.Socket] = []
        try:
            address = f"inproc://viewer-link-{id(self)}"
            inner = self._context.socket(zmq.PAIR)
            sockets.append(inner)
            inner.linger = 0
            inner.bind(address)
            pipe = self._context.socket(zmq.PAIR)
            sockets.append(pipe)
            pipe.linger = 0
            pipe.connect(address)
            sub = self._context.socket(zmq.SUB)
            sockets.append(sub)
            self._setup_sub(sub)
            req = self._context.socket(zmq.REQ)
            sockets.append(req)
            self._setup_req(req)
        except zmq.ZMQError as exc:
            for sock in sockets:
                sock.close(linger=0)
            self._context.term()
            self._context = None
            raise ValueError(
                f"cannot connect to {self.params.publish_endpoint} / "
                f"{self.control_endpoint}: {exc}"
            ) from None
        self._pipe = pipe
        self._thread = threading.Thread(
            target=self._run, args=(inner, sub, req), name="viewer-network", daemon=True
        )
        self._thread.start()

    def request(self, request: Mapping[str, Any]) -> None:
        """Queue a control request; its :class:`Reply` comes through :meth:`take`.

        Raises
        ------
        ValueError
            If the request is not one the daemon accepts (checked before sending; the
            message names the faulty field).
        """
        if self._pipe is None:
            raise RuntimeError("DaemonLink is not started")
        checked = protocol.check_request(dict(request))
        try:
            self._pipe.send_multipart([_REQUEST, protocol.pack(checked)], zmq.NOBLOCK)
        except zmq.Again:
            raise ValueError(
                f"too many control requests waiting (the daemon at "
                f"{self.control_endpoint} is slow to answer); try again later"
            ) from None

    def take(self) -> Inbox:
        """Return what arrived since the last call, and clear it."""
        with self._lock:
            inbox, self._inbox = self._inbox, Inbox()
            self._woken = False
        return inbox

    def stop(self) -> None:
        """Stop the network thread and close every socket (idempotent)."""
        if self._thread is None:
            return
        assert self._pipe is not None and self._context is not None
        self._pipe.send(_STOP)
        self._thread.join(STOP_TIMEOUT_S)
        self._pipe.close()
        if self._thread.is_alive():  # never seen: the thread does not block
            log.error("the viewer's network thread did not stop; leaving its sockets open")
        else:
            self._context.term()
        self._thread = None
        self._pipe = None
        self._context = None

    # --- network-thread side ---------------------------------------------------------

    def _setup_sub(self, sub: zmq.Socket) -> None:
        sub.linger = 0
        sub.rcvhwm = self.params.receive_hwm
        if self._keys is not None:
            self._keys.apply(sub)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_STACK)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_STATUS)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_PREVIEW)
        sub.connect(self.params.publish_endpoint)

    def _setup_req(self, req: zmq.Socket) -> None:
        req.linger = 0
        if self._keys is not None:
            self._keys.apply(req)
        req.connect(self.control_endpoint)

    def _run(self, pipe: zmq.Socket, sub: zmq.Socket, req: zmq.Socket) -> None:
        try:
            self._loop(pipe, sub, req)
        except Exception:  # a bug: say so (the window then shows the daemon as lost)
            log.exception("the viewer's network thread failed")

    def _loop(self, pipe: zmq.Socket, sub: zmq.Socket, req: zmq.Socket) -> None:
        assert self._context is not None
        poller = zmq.Poller()
        poller.register(pipe, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        poller.register(req, zmq.POLLIN)
        queued: deque[dict[str, Any]] = deque()
        pending: dict[str, Any] | None = None
        deadline = 0.0
        connected = self.control_endpoint  # where req is connected
        try:
            while True:
                timeout = None
                if pending is not None:
                    timeout = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                events = dict(poller.poll(timeout))
                if pipe in events:
                    parts = pipe.recv_multipart()
                    if parts[0] == _STOP:
                        return
                    queued.append(protocol.unpack(parts[1], what="queued request"))
                if sub in events:
                    announced = self._drain(sub)
                    if announced and self.params.follow_announced_control:
                        wanted = reachable_control(self.params.publish_endpoint, announced)
                        if wanted != self.control_endpoint:
                            log.info("the daemon's control socket is %s", wanted)
                            self.control_endpoint = wanted
                if self.control_endpoint != connected and pending is None:
                    poller.unregister(req)
                    req.close()
                    req = self._context.socket(zmq.REQ)
                    self._setup_req(req)
                    poller.register(req, zmq.POLLIN)
                    connected = self.control_endpoint
                if pending is not None and req in events:
                    self._deliver_reply(parse_reply(req.recv(), pending))
                    pending = None
                elif pending is not None and time.monotonic() >= deadline:
                    error = (
                        f"no answer from {self.control_endpoint} within "
                        f"{self.params.control_timeout_s:g} s"
                    )
                    self._deliver_reply(Reply(pending, False, None, error))
                    pending = None
                    # A REQ socket that sent and got no answer is stuck: make a new one.
                    poller.unregister(req)
                    req.close()
                    req = self._context.socket(zmq.REQ)
                    self._setup_req(req)
                    poller.register(req, zmq.POLLIN)
                while pending is None and queued:
                    request = queued.popleft()
                    try:
                        # A REQ socket without a connection (e.g. after a refused CURVE
                        # handshake) would block here: never wait, answer at once.
                        req.send(protocol.pack(request), zmq.NOBLOCK)
                    except zmq.Again:
                        error = (
                            f"not connected to {self.control_endpoint} (no daemon "
                            "there, or it refused this client's keys)"
                        )
                        self._deliver_reply(Reply(request, False, None, error))
                    else:
                        pending = request
                        deadline = time.monotonic() + self.params.control_timeout_s
        finally:
            req.close()
            sub.close()
            pipe.close()

    def _drain(self, sub: zmq.Socket) -> str:
        """Take what the subscriber holds into the inbox; return the control endpoint
        the newest status announces ("" if none did)."""
        stack: StackMessage | None = None
        preview: PreviewMessage | None = None
        skipped = 0
        statuses: list[dict[str, Any]] = []
        bad = 0
        last_error = ""
        for _ in range(_DRAIN_LIMIT):
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            topic = parts[0].bytes
            try:
                if topic == protocol.TOPIC_STACK:
                    if len(parts) != 3:
                        raise protocol.ProtocolError(
                            f"stack message has {len(parts)} parts, expected 3"
                        )
                    # Decoding costs no copy: only the newest stack is kept.
                    decoded = decode_stack(parts, time.monotonic())
                    skipped += stack is not None
                    stack = decoded
                elif topic == protocol.TOPIC_PREVIEW:
                    preview = decode_preview(parts, time.monotonic())
                elif topic == protocol.TOPIC_STATUS:
                    if len(parts) != 2:
                        raise protocol.ProtocolError(
                            f"status message has {len(parts)} parts, expected 2"
                        )
                    statuses.append(protocol.unpack(parts[1].buffer, what="status"))
                else:
                    raise protocol.ProtocolError(f"unknown topic {topic[:32]!r}")
            except protocol.ProtocolError as exc:
                bad += 1
                last_error = f"{topic[:32].decode(errors='replace')}: {exc}"
        announced = ""
        for st in statuses:
            endpoints = st.get("endpoints") if isinstance(st, dict) else None
            if isinstance(endpoints, dict) and isinstance(endpoints.get("control"), str):
                announced = endpoints["control"]
        if stack is None and preview is None and not statuses and not bad:
            return announced
        with self._lock:
            inbox = self._inbox
            if stack is not None:
                inbox.stale_stacks += skipped + (inbox.stack is not None)
                inbox.stack = stack
            else:
                inbox.stale_stacks += skipped
            if preview is not None:
                inbox.preview = preview
            inbox.statuses.extend(statuses)
            del inbox.statuses[:-_STATUS_BACKLOG]
            inbox.bad_messages += bad
            if last_error:
                inbox.last_error = last_error
            wake = not self._woken
            self._woken = True
        if wake:
            self.arrived.emit()
        return announced

    def _deliver_reply(self, reply: Reply) -> None:
        with self._lock:
            self._inbox.replies.append(reply)
            wake = not self._woken
            self._woken = True
        if wake:
            self.arrived.emit()
