"""Frame sources: separate processes that push frames to a daemon's ingest socket.

Each source is a module with ``main(argv) -> int``; ``live-stack source KIND ...``
dispatches to it (see :data:`SOURCES`). They all send with :class:`FramePusher`, which
speaks the wire format of :mod:`daemon.protocol`::

    from daemon.sources import FramePusher

    with FramePusher("tcp://127.0.0.1:5555", source="my-camera") as push:
        push.send(frame, capture_time=t, exposure=0.005)
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from daemon import protocol
from daemon.config import DEFAULT_INGEST, check_endpoint
from daemon.lifecycle import StopSignal
from daemon.security import ClientCurve, add_client_arguments, apply_client_curve

log = logging.getLogger(__name__)

#: ``live-stack source KIND`` -> "module:function" taking argv and returning the exit code.
SOURCES: dict[str, str] = {
    "folder": "daemon.sources.folder:main",
    "replay": "daemon.sources.replay:main",
    "indi": "daemon.sources.indi:main",
}

#: Send high-water mark of a source (frames buffered while the daemon is slow or away).
PUSH_HWM = 64

#: Seconds queued frames still get to reach the daemon when a source closes normally.
FLUSH_TIMEOUT = 5.0

#: Seconds :meth:`FramePusher.send` waits at a time for room before checking for a stop.
SEND_POLL = 0.1

#: Seconds after connecting without a completed handshake with the daemon after which a
#: source warns that its frames are not arriving.
HANDSHAKE_WARN = 5.0

#: Monitor events of a failed ZMTP handshake (a refused CURVE key gives the first).
_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the daemon refused this client's key (is it in the "
    "daemon's authorized_clients folder?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (is --server-key the daemon's "
    "key, and CURVE on at both ends?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (CURVE on at one end only, "
    "or another program on that port?)",
}


class FramePusher:
    """A PUSH socket connected to a daemon's ingest, sending frames with sequence numbers.

    Parameters
    ----------
    endpoint : str
        The daemon's ingest endpoint.
    source : str
        Identifier put in every header (the daemon counts sequence gaps per source).
    curve : ClientCurve, optional
        Keys for a daemon with CURVE on.
    context : zmq.Context, optional
        Context to use; a private one is made (and terminated at close) if not given.
    stop : threading.Event, optional
        When set, a :meth:`send` waiting for room gives up and returns False.
    hwm : int
        Frames buffered before :meth:`send` waits.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_INGEST,
        *,
        source: str = "",
        curve: ClientCurve | None = None,
        context: zmq.Context | None = None,
        stop: threading.Event | None = None,
        hwm: int = PUSH_HWM,
    ) -> None:
        check_endpoint(endpoint, name="endpoint")
        if not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be an integer >= 1, got {hwm!r}")
        self.endpoint = endpoint
        self.source = source
        self.seq = 0  # sequence number of the next frame
        self._stop = stop
        self._own = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.PUSH)
        self._closed = False
        self._monitor: zmq.Socket | None = None
        #: True once a handshake with the daemon completed (frames can reach it)
        self.linked = False
        self._problem: str | None = None  # why no handshake completed, when known
        self._warned = False
        self._since = time.monotonic()
        try:
            self._sock.sndhwm = hwm
            apply_client_curve(self._sock, curve)
            self._monitor = self._sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILED))
            self._sock.connect(endpoint)
        except Exception:
            self.close(flush=0)
            raise

    def send(
        self,
        frame: np.ndarray,
        *,
        capture_time: float | None = None,
        bayer: str | None = None,
        exposure: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """Send one frame (waiting while the daemon's buffers are full).

        Returns False, without sending, if the ``stop`` event was set while waiting.
        Raises ValueError for a frame the wire format cannot carry or the daemon would
        drop as malformed (its size out of range), so that no source says it sent it.
        """
        if frame.ndim >= 2:
            protocol.check_size(int(frame.shape[1]), int(frame.shape[0]))
        parts = protocol.encode_image(frame, kind="frame", seq=self.seq,
                                      capture_time=capture_time, bayer=bayer,
                                      exposure=exposure, source=self.source, meta=meta)
        while True:
            self._check_link()
            if self._sock.poll(SEND_POLL * 1000, zmq.POLLOUT):
                try:  # the room may be gone since (a refused handshake drops the pipe)
                    self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    pass
            if self._stop is not None and self._stop.is_set():
                return False
        self.seq += 1
        return True

    def _check_link(self) -> None:
        """Read the handshake events; warn once when no handshake completed within
        :data:`HANDSHAKE_WARN` seconds or the daemon refused it (frames then wait in
        this process and never arrive)."""
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._warned:
                    log.info("the daemon at %s completed the handshake: frames arrive now",
                             self.endpoint)
                self.linked, self._problem, self._warned = True, None, False
            elif event in _HANDSHAKE_FAILED and not self.linked:
                self._problem = _HANDSHAKE_FAILED[event]
        late = time.monotonic() - self._since >= HANDSHAKE_WARN
        if not self.linked and not self._warned and (late or self._problem):
            self._warned = True
            log.warning("no handshake with the daemon at %s %s: %s; the frames sent wait here "
                        "and do not arrive", self.endpoint,
                        "completed" if self._problem else f"after {HANDSHAKE_WARN:g} s",
                        self._problem or "is the daemon running there (and, with CURVE, "
                        "is this client's key authorised)?")

    def send_raw(self, parts: list[bytes]) -> None:
        """Send arbitrary message parts (for tests of the daemon's error handling)."""
        self._sock.send_multipart(parts)

    def close(self, *, flush: float = FLUSH_TIMEOUT) -> None:
        """Close, giving frames still queued ``flush`` seconds to reach the daemon."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + flush
        if self._monitor is not None:
            self._check_link()
            while (self.seq and not self.linked and self._problem is None
                   and self._monitor.poll(max(0.0, deadline - time.monotonic()) * 1000)):
                self._check_link()
            if not self.linked and self.seq:
                log.warning("none of the %d frames sent reached the daemon at %s: %s",
                            self.seq, self.endpoint,
                            self._problem or "no handshake with it completed")
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._sock.close(linger=int(max(0.0, deadline - time.monotonic()) * 1000))
        if self._own:
            self._ctx.term()

    def __enter__(self) -> FramePusher:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        stopped = self._stop is not None and self._stop.is_set()
        self.close(flush=0 if exc_type is not None or stopped else FLUSH_TIMEOUT)


def add_pusher_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--to``, ``--source-id`` and the CURVE key options to a source's parser."""
    parser.add_argument("--to", metavar="ENDPOINT", default=DEFAULT_INGEST,
                        help=f"the daemon's ingest endpoint (default {DEFAULT_INGEST})")
    parser.add_argument("--source-id", metavar="NAME", default=None,
                        help="identifier sent with every frame (default: from the input)")
    add_client_arguments(parser)


def curve_from_args(args: argparse.Namespace) -> ClientCurve | None:
    """The client keys given on a source's command line (see :func:`add_pusher_arguments`)."""
    from daemon.security import client_curve_from_args

    return client_curve_from_args(args)


def run_source(work: Callable[[threading.Event], int], *, name: str,
               on_stop: Callable[[], None] | None = None) -> int:
    """Run ``work(stop)`` in a thread until it returns or SIGTERM/SIGINT arrives.

    ``stop`` is set on a signal (and ``on_stop`` called, e.g. to wake ``work``);
    ``work`` should then return soon. A ValueError or
    OSError from ``work`` (a bad file, an unreadable folder) is logged and gives exit
    code 1. Returns ``work``'s exit code.
    """
    result = {"rc": 1}
    with StopSignal() as sig:

        def target() -> None:
            try:
                result["rc"] = work(sig.event)
            except (ValueError, OSError) as exc:
                log.error("%s source: %s", name, exc)
            except Exception:
                log.exception("%s source failed", name)
            finally:
                sig.trigger()

        thread = threading.Thread(target=target, name=f"{name}-source")
        thread.start()
        sig.wait(None)
        sig.event.set()
        if on_stop is not None:
            on_stop()
        thread.join()
        if sig.signal is not None:
            log.info("%s source stopped by signal %d", name, sig.signal)
    return result["rc"]
