"""Camera control relayed by the daemon: viewers ask, the source that owns the camera acts.

The daemon's control socket is a ROUTER, so that besides the viewers' and ``ctl``'s
requests (REQ sockets, answered one by one) it also talks with sources (DEALER sockets)
that own a camera (``live-stack source indi``):

- a source announces itself and its camera's current settings with ``camera_hello``
  ``{source, state}`` (at the start of each capture session, after each change, and
  every :data:`HELLO_INTERVAL` seconds, so a restarted daemon learns of it);
- a viewer sends ``camera`` ``{settings}`` (``exposure`` in seconds, ``gain``,
  ``binning``, ``roi`` ``[x, y, width, height]`` in sensor pixels); the daemon forwards
  it to the source as ``camera_set`` ``{id, settings}``;
- the source answers ``camera_result`` ``{id, result}`` with ``{applied, refused,
  state}`` (``refused`` says for each refused value why), which the daemon returns to the
  viewer; no answer within :data:`CAMERA_TIMEOUT` seconds gives the viewer an error.

:class:`CameraRelay` is the bookkeeping, without sockets: the control thread passes it
what arrives and sends what it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon import protocol

#: Seconds the daemon waits for the source's answer to a camera request.
CAMERA_TIMEOUT = 8.0

#: Seconds between two announcements of a source (so a restarted daemon learns of it).
HELLO_INTERVAL = 5.0

#: A source not heard of for this many seconds is no longer listed.
SOURCE_EXPIRY = 3 * HELLO_INTERVAL

#: A ROUTER envelope: the routing identities up to (not including) the empty delimiter.
Envelope = tuple[bytes, ...]


@dataclass
class _Pending:
    """A viewer's camera request waiting for the source's answer."""

    viewer: Envelope  # where the answer goes
    source: str  # the source asked
    deadline: float  # monotonic time after which the viewer gets a timeout error


@dataclass
class _Source:
    """A source that owns a camera."""

    envelope: Envelope  # how to reach it
    state: dict[str, Any]  # its camera's settings, as it last said
    seen: float  # monotonic time it was last heard of
    time: float  # Unix time of the same


class CameraRelay:
    """Which sources own a camera, and the camera requests waiting for their answer.

    Parameters
    ----------
    timeout : float
        Seconds a viewer's request waits for the source's answer.
    clock : callable
        Monotonic clock (injectable for tests).
    """

    def __init__(self, *, timeout: float = CAMERA_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()  # status() reads from the publisher's thread
        self._sources: dict[str, _Source] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1

    def hello(self, envelope: Envelope, request: dict[str, Any]) -> None:
        """A source announced itself (``camera_hello``)."""
        now = self._clock()
        with self._lock:
            self._sources[request["source"]] = _Source(envelope, dict(request["state"]), now,
                                                       time.time())

    def forward(self, viewer: Envelope, request: dict[str, Any]
                ) -> tuple[Envelope, bytes] | bytes:
        """A viewer's ``camera`` request: the message for the source, or an error reply.

        Returns
        -------
        (envelope, bytes) or bytes
            Where to send the ``camera_set`` message and the message; or, when no
            source owns a camera, the encoded error reply for the viewer.
        """
        now = self._clock()
        with self._lock:
            live = {k: s for k, s in self._sources.items() if now - s.seen <= SOURCE_EXPIRY}
            if not live:
                return protocol.encode_error(
                    "camera: no source that owns a camera is connected (start "
                    "'live-stack source indi' with --control set to this daemon's control "
                    "endpoint)")
            name = max(live, key=lambda k: live[k].seen)  # the one heard of last
            ident = self._next_id
            self._next_id += 1
            self._pending[ident] = _Pending(viewer, name, now + self._timeout)
            message = protocol.pack({"cmd": "camera_set", "id": ident,
                                     "settings": request["settings"]})
            return live[name].envelope, message

    def result(self, request: dict[str, Any]) -> tuple[Envelope, bytes] | None:
        """A source's ``camera_result``: the viewer to answer and the reply (None if the
        request is unknown, e.g. answered already as timed out)."""
        with self._lock:
            pending = self._pending.pop(request["id"], None)
            result = request["result"]
            state = result.get("state") if isinstance(result, dict) else None
            if pending is not None and isinstance(state, dict) \
                    and pending.source in self._sources:
                self._sources[pending.source].state = dict(state)
        if pending is None:
            return None
        return pending.viewer, protocol.encode_reply({"source": pending.source, **result})

    def expired(self) -> list[tuple[Envelope, bytes]]:
        """The viewers whose request got no answer in time, with their error replies."""
        now = self._clock()
        with self._lock:
            late = [k for k, p in self._pending.items() if now >= p.deadline]
            gone = [self._pending.pop(k) for k in late]
        return [(p.viewer, protocol.encode_error(
            f"camera: the source {p.source!r} did not answer within {self._timeout:g} s"))
            for p in gone]

    def next_deadline(self) -> float | None:
        """Monotonic time of the earliest pending request's deadline, or None."""
        with self._lock:
            return min((p.deadline for p in self._pending.values()), default=None)

    def as_dict(self) -> dict[str, Any]:
        """The status's ``camera`` map: ``{source: {state, time}}`` of the sources heard
        of in the last :data:`SOURCE_EXPIRY` seconds."""
        now = self._clock()
        with self._lock:
            return {k: {"state": s.state, "time": s.time} for k, s in self._sources.items()
                    if now - s.seen <= SOURCE_EXPIRY}


def split_envelope(parts: list[bytes]) -> tuple[Envelope, list[bytes]] | None:
    """A ROUTER message's envelope and body (after the empty delimiter); None without one."""
    for i, part in enumerate(parts):
        if part == b"":
            return tuple(parts[:i]), parts[i + 1:]
    return None
