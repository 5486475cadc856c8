"""``live-stack source indi``: push an INDI camera's frames to the daemon.

The source connects to an INDI server (``indiserver``) through pyindi-client, connects
the camera, sets it up and pushes every frame it sends to the daemon's ingest socket in
the wire format of :mod:`daemon.protocol`.

- **Streaming** uses the camera's video stream (``CCD_VIDEO_STREAM`` with the ``RAW``
  encoder) where the driver offers one, and an **exposure loop** (``CCD_EXPOSURE`` with
  FITS BLOBs) otherwise, or as ``--mode`` says. Exposure, gain, binning and region of
  interest are set where the device offers them. In streaming mode the ROI is first
  asked of the camera (``CCD_FRAME``); a driver that then sends no stream frames gets
  the ROI cropped by INDI's stream manager instead (``CCD_STREAM_FRAME``).
- **Resilience:** a lost server connection, a camera that disconnects or a stream that
  stalls is logged and retried with exponential backoff; the source never exits because
  of it. A BLOB that cannot be decoded is counted and skipped. A ``--device`` the server
  does not have after ``--device-timeout`` seconds is an error (exit status 3).
- **Timing:** each frame carries its capture time (``DATE-OBS`` of a FITS frame, the
  arrival time of a stream frame) and a sequence number counting every BLOB received,
  so frames lost on the way show as gaps.

INDI's thread only records (see :mod:`daemon.sources.indi_link`); this module's
controller runs on the main thread, waiting on the link's condition with timeouts.
"""

from __future__ import annotations

import argparse
import enum
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from daemon.config import DEFAULT_CONTROL, DEFAULT_INGEST, check_endpoint
from daemon.protocol import encode_image
from daemon.sources.indi_decode import (
    BAYER_PATTERNS,
    BlobDecodeError,
    RawGeometry,
    ReceivedBlob,
    decode_blob,
    shift_bayer,
)

log = logging.getLogger("live_stack.source.indi")

#: Exit statuses of :func:`main`.
EXIT_OK = 0
EXIT_USAGE = 2  # bad command line (argparse's own status too)
EXIT_NO_DEVICE = 3  # the named device (or any camera) is not on the server
EXIT_SETUP = 4  # the device cannot do what was asked (e.g. --mode stream without a stream)
EXIT_NO_PYINDI = 5  # pyindi-client is not installed

#: INDI's default port.
DEFAULT_INDI_PORT = 7624
#: Capture modes.
MODES = ("auto", "stream", "exposure")
#: Exposure time of the exposure loop when none is given, in seconds.
DEFAULT_EXPOSURE_S = 0.01
#: The BLOB property of a CCD's primary chip.
BLOB_PROPERTY = "CCD1"
#: Bit of DRIVER_INFO.DRIVER_INTERFACE that marks a camera (INDI's CCD_INTERFACE).
CCD_INTERFACE = 1 << 1
#: Seconds to wait for the driver's answer to a setting.
SETTING_TIMEOUT_S = 3.0
#: Consecutive exposures that may bring no frame before the session is restarted.
MAX_EXPOSURE_RETRIES = 2
#: Distinct decode errors logged as warnings; later ones are logged at debug level.
MAX_LOGGED_DECODE_ERRORS = 10


class Outcome(enum.Enum):
    """Why a capture session ended."""

    STOPPED = "stopped"  # a stop was requested
    SERVER_LOST = "server lost"  # the INDI server connection dropped
    DEVICE_LOST = "device lost"  # the camera disconnected or disappeared
    STALLED = "stalled"  # no frame came within the stall timeout
    FAILED = "failed"  # the camera could not be connected or set up
    RECONFIGURE = "reconfigured"  # binning or ROI changed from the viewer: set up again


class SetupError(ValueError):
    """The device cannot do what the options ask; the message says what."""


@dataclass(frozen=True)
class IndiParams:
    """Options of the INDI source."""

    host: str = "localhost"  # INDI server host
    port: int = DEFAULT_INDI_PORT  # INDI server port
    device: str = ""  # camera device name; empty: the first camera the server lists
    endpoint: str = DEFAULT_INGEST  # daemon ingest endpoint to push frames to
    # the daemon's control endpoint, where camera settings come from (viewers' requests
    # relayed by the daemon); "": no camera control
    control: str = DEFAULT_CONTROL
    mode: str = "auto"  # "stream", "exposure", or "auto" (stream where offered)
    exposure: float | None = None  # exposure in seconds; None: device's (stream) or 0.01 s
    gain: float | None = None  # camera gain (CCD_GAIN or CCD_CONTROLS "Gain"); None: keep
    binning: int | None = None  # binning factor (both axes); None: keep the device's
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in sensor pixels
    device_timeout: float = 5.0  # seconds to wait for the device to be listed at start
    connect_timeout: float = 10.0  # seconds to wait for server and camera connections
    stall_timeout: float = 5.0  # seconds without frames (beyond the exposure) = stalled
    settle_time: float = 0.5  # quiet seconds after connecting before properties are used
    backoff_initial: float = 0.5  # first reconnection delay in seconds
    backoff_max: float = 30.0  # longest reconnection delay in seconds
    queue_size: int = 8  # BLOBs buffered between INDI's thread and the sender
    send_hwm: int = 32  # frames queued in the PUSH socket before new ones are dropped
    stats_interval: float = 10.0  # seconds between progress log lines

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            1 <= self.port <= 65535
        ):
            raise ValueError(f"port must be an integer in 1..65535, got {self.port!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string, got {self.device!r}")
        check_endpoint(self.endpoint, name="endpoint")
        if self.control:
            check_endpoint(self.control, name="control")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.exposure is not None and not self.exposure > 0:
            raise ValueError(f"exposure must be > 0 seconds, got {self.exposure!r}")
        if self.gain is not None and not self.gain >= 0:
            raise ValueError(f"gain must be >= 0, got {self.gain!r}")
        if self.binning is not None and (
            isinstance(self.binning, bool) or not isinstance(self.binning, int)
            or self.binning < 1
        ):
            raise ValueError(f"binning must be an integer >= 1, got {self.binning!r}")
        if self.roi is not None:
            if len(self.roi) != 4 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in self.roi
            ):
                raise ValueError(f"roi must be 4 integers (x, y, width, height), got {self.roi!r}")
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w < 1 or h < 1:
                raise ValueError(f"roi must have x, y >= 0 and width, height >= 1, got {self.roi}")
        for name in ("device_timeout", "connect_timeout", "stall_timeout", "backoff_initial",
                     "backoff_max", "stats_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not self.settle_time >= 0:
            raise ValueError(f"settle_time must be >= 0 seconds, got {self.settle_time!r}")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )
        for name in ("queue_size", "send_hwm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class SourceCounters:
    """What the source has done so far (logged, and sent in each frame's ``meta``)."""

    received: int = 0  # BLOBs handed to the decoder
    sent: int = 0  # frames pushed to the daemon
    undecodable: int = 0  # BLOBs that did not decode and were skipped
    dropped_queue: int = 0  # BLOBs dropped because the decoder fell behind INDI
    dropped_send: int = 0  # frames dropped because the daemon's socket was full
    reconnects: int = 0  # sessions restarted after a loss or stall

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class Backoff:
    """Exponential backoff delays: ``initial``, doubling, capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial!r}, {maximum!r}")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The next delay in seconds."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self.initial


class BlobHandler:
    """Decode received BLOBs and push them as frames, counting what fails.

    Parameters
    ----------
    send : callable
        ``send(parts) -> bool`` pushes a ``[header, pixels]`` message; False if it was
        dropped (socket full).
    source_id : str
        The ``source`` field of each frame.
    counters : SourceCounters
        Updated for every BLOB.
    """

    def __init__(self, send: Callable[[list], bool], *, source_id: str,
                 counters: SourceCounters) -> None:
        self._send = send
        self.source_id = source_id
        self.counters = counters
        self._logged_errors: set[str] = set()

    def handle(self, blob: ReceivedBlob, *, geometry: RawGeometry | None = None,
               exposure: float | None = None, meta: dict[str, Any] | None = None) -> bool:
        """Decode one BLOB and push it; True if a frame was sent.

        ``geometry`` describes header-less raw frames; ``exposure`` is used when the BLOB
        does not say; ``meta`` is added to the frame's metadata.
        """
        self.counters.received += 1
        try:
            frame = decode_blob(blob.data, blob.fmt, size=blob.size, geometry=geometry)
            capture = frame.capture_time if frame.capture_time is not None else blob.arrival
            parts = encode_image(
                frame.image, kind="frame", seq=blob.seq, capture_time=capture,
                bayer=frame.bayer,
                exposure=frame.exposure if frame.exposure is not None else exposure,
                source=self.source_id,
                meta={**(meta or {}), "format": blob.fmt, "bit_depth": frame.bit_depth,
                      **self.counters.as_dict()},
            )
        except (BlobDecodeError, ValueError) as exc:
            self.counters.undecodable += 1
            text = str(exc)
            if text not in self._logged_errors and len(self._logged_errors) < (
                MAX_LOGGED_DECODE_ERRORS
            ):
                self._logged_errors.add(text)
                log.warning("skipping BLOB #%d (%s, %d bytes): %s", blob.seq, blob.fmt,
                            len(blob.data), text)
            else:
                log.debug("skipping BLOB #%d: %s", blob.seq, text)
            return False
        if self._send(parts):
            self.counters.sent += 1
            return True
        self.counters.dropped_send += 1
        return False


class FrameSender:
    """A PUSH socket to the daemon's ingest endpoint that never blocks.

    Parameters
    ----------
    context : zmq.Context
    endpoint : str
        The daemon's ingest endpoint.
    hwm : int
        Send high-water mark (frames); when reached, new frames are dropped.
    curve : daemon.security.ClientCurve, optional
        CURVE keys for a daemon bound beyond loopback.
    """

    def __init__(self, context: Any, endpoint: str, *, hwm: int, curve: Any = None) -> None:
        import zmq

        from daemon.security import apply_client_curve

        self._zmq = zmq
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        apply_client_curve(self.socket, curve)
        self.socket.connect(endpoint)

    def send(self, parts: list) -> bool:
        """Push one message without blocking; False if the queue is full."""
        try:
            self.socket.send_multipart(parts, flags=self._zmq.NOBLOCK, copy=False)
        except self._zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket (pending frames are discarded)."""
        self.socket.close(linger=0)


@dataclass
class _Setup:
    """How the current session captures."""

    mode: str  # "stream" or "exposure"
    bayer: str | None  # the sensor's Bayer pattern from CCD_CFA, or None
    exposure: float | None  # exposure time in seconds, as set or as the device reports
    meta: dict[str, Any] = field(default_factory=dict)  # added to every frame's meta


class IndiSource:
    """The controller: connects, sets up, captures, and starts over after a loss.

    Parameters
    ----------
    params : IndiParams
    link : daemon.sources.indi_link.IndiLink
        The INDI client (or anything with its interface).
    handler : BlobHandler
    stop : threading.Event
        Set to stop; call ``link.wake()`` after setting it.
    ping : callable, optional
        Called at least every ``ping_interval`` seconds while running (systemd watchdog).
    ping_interval : float, optional
    channel : daemon.sources.indi_camera.CameraChannel, optional
        Camera settings from the daemon (the viewers' requests) and the answers to them.
    """

    def __init__(self, params: IndiParams, link: Any, handler: BlobHandler,
                 stop: threading.Event, *, ping: Callable[[], None] | None = None,
                 ping_interval: float | None = None, channel: Any = None) -> None:
        self.params = params
        self.link = link
        self.handler = handler
        self.counters = handler.counters
        self.stop = stop
        self._ping = ping
        self._ping_interval = ping_interval
        self._backoff = Backoff(params.backoff_initial, params.backoff_max)
        self._crop_roi_in_stream = False  # fall back to cropping in INDI's stream manager
        self._session_frames = 0
        self._last_stats = time.monotonic()
        self._stats_sent = 0
        #: the device name in use (resolved from the server when params.device is empty)
        self.device = params.device
        #: camera commands from the daemon (a daemon.sources.indi_camera.CameraChannel)
        self.channel = channel

    # --- waiting ----------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait on the link until ``predicate()``, a stop, or ``timeout``; pings meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            step = remaining
            if self._ping_interval is not None:
                step = min(step, self._ping_interval)
            done = self.link.wait(lambda: self.stop.is_set() or predicate(), max(0.0, step))
            if self._ping is not None:
                self._ping()
            if done or remaining <= step:
                return bool(predicate()) if not self.stop.is_set() else False

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` or until a stop."""
        self._wait(lambda: False, seconds)

    # --- the main loop ----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns an exit status."""
        p = self.params
        found_once = False
        try:
            while not self.stop.is_set():
                if not self.link.server_up:
                    if not self.link.connect():
                        delay = self._backoff.next()
                        log.warning("cannot reach the INDI server at %s:%d; retrying in %.1f s",
                                    p.host, p.port, delay)
                        self._pause(delay)
                        continue
                    log.info("connected to the INDI server at %s:%d", p.host, p.port)
                name = self._wait_for_device()
                if self.stop.is_set():
                    break
                if name is None:
                    if not self.link.server_up:
                        continue
                    listed = ", ".join(self.link.devices()) or "none"
                    wanted = f"device {p.device!r}" if p.device else "camera"
                    if not found_once:
                        log.error("the INDI server at %s:%d has no %s (devices: %s)",
                                  p.host, p.port, wanted, listed)
                        return EXIT_NO_DEVICE
                    delay = self._backoff.next()
                    log.warning("the INDI server lists no %s (devices: %s); reconnecting in "
                                "%.1f s", wanted, listed, delay)
                    # A new connection (with a new client, see indi_link) asks for every
                    # property again, in case the server had not loaded its drivers yet.
                    self.link.disconnect()
                    self._pause(delay)
                    continue
                found_once = True
                self.device = name
                try:
                    outcome = self._session(name)
                except SetupError as exc:
                    log.error("%s", exc)
                    return EXIT_SETUP
                if outcome is Outcome.STOPPED or self.stop.is_set():
                    break
                if outcome is Outcome.RECONFIGURE:
                    continue  # at once: nothing was lost
                self.counters.reconnects += 1
                if self._session_frames:
                    self._backoff.reset()
                delay = self._backoff.next()
                log.warning("capture from %s ended (%s); starting over in %.1f s",
                            name, outcome.value, delay)
                self._pause(delay)
        finally:
            self._finish()
        return EXIT_OK

    def _finish(self) -> None:
        """Stop the capture on the camera if possible and leave the server."""
        if self.link.server_up and self.device:
            stream = self.link.prop(self.device, "CCD_VIDEO_STREAM")
            if stream is not None and stream.values.get("STREAM_ON"):
                self._send_on_exit("CCD_VIDEO_STREAM", "STREAM_OFF")
            exposure = self.link.prop(self.device, "CCD_EXPOSURE")
            if exposure is not None and exposure.state == "busy":
                self._send_on_exit("CCD_ABORT_EXPOSURE", "ABORT")
        self.link.disconnect()
        self._log_stats(final=True)

    def _send_on_exit(self, name: str, element: str) -> None:
        """Turn a switch on and wait (briefly, even though stopping) for the answer.

        The client library writes asynchronously: leaving the server at once could lose
        the message.
        """
        before = self.link.revision
        if self.link.set_switch(self.device, name, element):

            def answered() -> bool:
                snap = self.link.prop(self.device, name)
                return snap is None or snap.revision > before or not self.link.server_up

            if not self.link.wait(answered, SETTING_TIMEOUT_S):
                log.warning("%s: no answer to %s = %s while stopping", self.device, name,
                            element)

    def _wait_for_device(self) -> str | None:
        """The device to use once the server lists it, or None after the device timeout."""
        found: list[str] = []

        def listed() -> bool:
            if not self.link.server_up:
                return True
            # a device is usable once its CONNECTION switch is defined, just after it appears
            found[:] = [d for d in self.link.devices() if self._is_wanted(d)
                        and self.link.prop(d, "CONNECTION") is not None]
            return bool(found)

        self._wait(listed, self.params.device_timeout)
        if not found or not self.link.server_up:
            return None
        if not self.params.device and len(found) > 1:
            log.info("several cameras (%s); using %s", ", ".join(found), found[0])
        return found[0]

    def _is_wanted(self, device: str) -> bool:
        """Whether ``device`` is the one asked for (or, with none asked, a camera)."""
        if self.params.device:
            return device == self.params.device
        info = self.link.prop(device, "DRIVER_INFO")
        try:
            interface = int(info.values.get("DRIVER_INTERFACE", "0")) if info else 0
        except ValueError:
            interface = 0
        return bool(interface & CCD_INTERFACE) or self.link.prop(device, "CCD_EXPOSURE") is not None

    def _connected(self, device: str) -> bool:
        """Whether the driver reports ``device`` connected (and not failing)."""
        conn = self.link.prop(device, "CONNECTION")
        return conn is not None and bool(conn.values.get("CONNECT")) and conn.state not in (
            "alert", "busy")

    # --- one session: connect the camera, set it up, capture ----------------------------

    def _session(self, device: str) -> Outcome:
        """Connect ``device``, set it up and capture until something ends the session."""
        self._session_frames = 0
        self.link.enable_blobs(device, BLOB_PROPERTY)
        losses = self.link.server_losses
        if not self._connected(device):
            log.info("connecting %s", device)
            self.link.connect_device(device)

            def answered() -> bool:
                conn = self.link.prop(device, "CONNECTION")
                return (self.link.server_losses != losses or conn is None
                        or conn.state == "alert" or self._connected(device))

            self._wait(answered, self.params.connect_timeout)
            if self.stop.is_set():
                return Outcome.STOPPED
            if self.link.server_losses != losses:
                return Outcome.SERVER_LOST
            if not self._connected(device):
                log.warning("%s did not connect (%s)", device,
                            self.link.last_message or "no message from the driver")
                return Outcome.FAILED
            log.info("%s connected", device)
        if not self._settle(device):
            return self._ended(device, losses) or Outcome.FAILED
        setup = self._configure(device)
        self._announce(device, setup)
        if setup.mode == "stream":
            return self._capture_stream(device, setup, losses)
        return self._capture_exposures(device, setup, losses)

    def _settle(self, device: str) -> bool:
        """Wait for the camera's properties, then for a quiet moment; False if lost."""
        losses = self.link.server_losses

        def ready() -> bool:
            return (self.link.server_losses != losses or not self._connected(device)
                    or self.link.prop(device, "CCD_EXPOSURE") is not None
                    or self.link.prop(device, "CCD_VIDEO_STREAM") is not None)

        if not self._wait(ready, self.params.connect_timeout):
            return False
        deadline = time.monotonic() + self.params.connect_timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            seen = self.link.definitions
            if not self._wait(lambda seen=seen: self.link.definitions != seen,
                              self.params.settle_time):
                break
        return (not self.stop.is_set() and self.link.server_losses == losses
                and self._connected(device))

    # --- setting the camera up ----------------------------------------------------------

    def _set_numbers(self, device: str, name: str, values: dict[str, float]) -> bool:
        """Send number values (clamped to their ranges) and wait for the driver's answer."""
        snap = self.link.prop(device, name)
        if snap is None:
            return False
        clamped = {}
        for element, value in values.items():
            lo, hi = snap.limits.get(element, (value, value))
            if hi > lo and not lo <= value <= hi:
                log.warning("%s.%s = %g is outside %g..%g; using %g", name, element, value,
                            lo, hi, min(max(value, lo), hi))
                value = min(max(value, lo), hi)
            clamped[element] = value
        if all(snap.values.get(k) == v for k, v in clamped.items()) and snap.state != "alert":
            return True
        return self._send_and_wait(
            device, name, lambda: self.link.set_numbers(device, name, clamped),
            ", ".join(f"{k}={v:g}" for k, v in clamped.items()))

    def _set_switch(self, device: str, name: str, element: str, *,
                    busy_ok: bool = False) -> bool:
        """Turn a switch on (if not on already) and wait for the driver's answer.

        ``busy_ok``: a busy state is the answer (a running stream stays busy).
        """
        snap = self.link.prop(device, name)
        if snap is None or element not in snap.values:
            return False
        if snap.values[element] and snap.state != "alert":
            return True
        return self._send_and_wait(
            device, name, lambda: self.link.set_switch(device, name, element), element,
            busy_ok=busy_ok)

    def _send_and_wait(self, device: str, name: str, send: Callable[[], bool], what: str, *,
                       busy_ok: bool = False) -> bool:
        before = self.link.revision
        if not send():
            return False
        answered: list[Any] = []

        def answer() -> bool:
            snap = self.link.prop(device, name)
            answered[:] = [snap]
            return snap is None or (snap.revision > before
                                    and (busy_ok or snap.state != "busy"))

        self._wait(answer, SETTING_TIMEOUT_S)
        snap = answered[0] if answered else None
        if snap is None or snap.revision <= before:
            log.warning("%s: no answer to %s = %s", device, name, what)
            return False
        if snap.state == "alert":
            log.warning("%s refused %s = %s (%s)", device, name, what,
                        self.link.last_message or "no message")
            return False
        log.info("%s: %s = %s", device, name, what)
        return True

    def _configure(self, device: str) -> _Setup:
        """Choose the mode and apply the options the device supports."""
        p = self.params
        has = self.link.prop
        mode = p.mode
        if mode == "auto":
            mode = "stream" if has(device, "CCD_VIDEO_STREAM") is not None else "exposure"
        elif mode == "stream" and has(device, "CCD_VIDEO_STREAM") is None:
            raise SetupError(f"{device} offers no video stream (CCD_VIDEO_STREAM); "
                             "use --mode exposure")
        elif mode == "exposure" and has(device, "CCD_EXPOSURE") is None:
            raise SetupError(f"{device} offers no exposures (CCD_EXPOSURE); use --mode stream")
        log.info("%s: capturing in %s mode", device, mode)
        stream = has(device, "CCD_VIDEO_STREAM")
        if stream is not None and stream.values.get("STREAM_ON"):
            self._set_switch(device, "CCD_VIDEO_STREAM", "STREAM_OFF")
        upload = has(device, "UPLOAD_MODE")
        if upload is not None and upload.values.get("UPLOAD_LOCAL"):
            self._set_switch(device, "UPLOAD_MODE", "UPLOAD_CLIENT")
        if mode == "exposure":
            self._set_switch(device, "CCD_TRANSFER_FORMAT", "FORMAT_FITS")
        else:
            self._set_switch(device, "CCD_STREAM_ENCODER", "RAW")
        bayer = self._bayer_pattern(device)
        self._apply_binning(device)
        self._apply_gain(device)
        self._apply_roi(device, mode, bayer)
        exposure = self._apply_exposure(device, mode)
        return _Setup(mode=mode, bayer=bayer, exposure=exposure,
                      meta={"device": device, "mode": mode})

    def _bayer_pattern(self, device: str) -> str | None:
        cfa = self.link.prop(device, "CCD_CFA")
        if cfa is None:
            return None
        pattern = str(cfa.values.get("CFA_TYPE", "")).strip().upper()
        if pattern not in BAYER_PATTERNS:
            if pattern:
                log.warning("%s: colour filter array %r is not supported; frames sent as mono",
                            device, pattern)
            return None
        try:
            dx = int(float(cfa.values.get("CFA_OFFSET_X", "0") or 0))
            dy = int(float(cfa.values.get("CFA_OFFSET_Y", "0") or 0))
        except ValueError:
            dx = dy = 0
        return shift_bayer(pattern, dx, dy)

    def _apply_binning(self, device: str) -> None:
        b = self.params.binning
        if b is None:
            return
        if self.link.prop(device, "CCD_BINNING") is None:
            log.warning("%s offers no binning (CCD_BINNING); --binning ignored", device)
            return
        self._set_numbers(device, "CCD_BINNING", {"HOR_BIN": b, "VER_BIN": b})

    def _apply_gain(self, device: str) -> None:
        g = self.params.gain
        if g is None:
            return
        if self.link.prop(device, "CCD_GAIN") is not None:
            self._set_numbers(device, "CCD_GAIN", {"GAIN": g})
            return
        controls = self.link.prop(device, "CCD_CONTROLS")
        element = next((k for k in (controls.values if controls else {})
                        if k.lower() == "gain"), None)
        if element is None:
            log.warning("%s offers no gain control (CCD_GAIN, CCD_CONTROLS); --gain ignored",
                        device)
            return
        self._set_numbers(device, "CCD_CONTROLS", {element: g})

    def _apply_roi(self, device: str, mode: str, bayer: str | None) -> None:
        roi = self.params.roi
        if roi is None:
            return
        x, y, w, h = roi
        if bayer is not None and (x % 2 or y % 2 or w % 2 or h % 2):
            x, y, w, h = x - x % 2, y - y % 2, max(2, w - w % 2), max(2, h - h % 2)
            log.info("%s: ROI made even for the Bayer mosaic: %d %d %d %d", device, x, y, w, h)
        if self.link.prop(device, "CCD_FRAME") is None:
            log.warning("%s offers no region of interest (CCD_FRAME); --roi ignored", device)
            return
        if mode == "stream" and self._crop_roi_in_stream:
            info = self.link.prop(device, "CCD_INFO")
            if info is not None and "CCD_MAX_X" in info.values:
                self._set_numbers(device, "CCD_FRAME", {
                    "X": 0, "Y": 0, "WIDTH": info.values["CCD_MAX_X"],
                    "HEIGHT": info.values["CCD_MAX_Y"]})
            binning = self._binning(device)
            if self.link.prop(device, "CCD_STREAM_FRAME") is None:
                log.warning("%s offers no stream frame (CCD_STREAM_FRAME); --roi ignored", device)
                return
            self._set_numbers(device, "CCD_STREAM_FRAME", {
                "X": x // binning[0], "Y": y // binning[1],
                "WIDTH": w // binning[0], "HEIGHT": h // binning[1]})
            return
        self._set_numbers(device, "CCD_FRAME", {"X": x, "Y": y, "WIDTH": w, "HEIGHT": h})

    def _apply_exposure(self, device: str, mode: str) -> float | None:
        p = self.params
        if mode == "exposure":
            return p.exposure if p.exposure is not None else DEFAULT_EXPOSURE_S
        limits = self.link.prop(device, "LIMITS")
        if limits is not None and "LIMITS_PREVIEW_FPS" in limits.values:
            top = limits.limits.get("LIMITS_PREVIEW_FPS", (0.0, 0.0))[1]
            if top > limits.values["LIMITS_PREVIEW_FPS"]:
                self._set_numbers(device, "LIMITS", {"LIMITS_PREVIEW_FPS": top})
        streaming = self.link.prop(device, "STREAMING_EXPOSURE")
        if p.exposure is not None:
            if streaming is None:
                log.warning("%s offers no stream exposure (STREAMING_EXPOSURE); --exposure "
                            "ignored", device)
            else:
                self._set_numbers(device, "STREAMING_EXPOSURE",
                                  {"STREAMING_EXPOSURE_VALUE": p.exposure})
        streaming = self.link.prop(device, "STREAMING_EXPOSURE")
        if streaming is not None:
            return streaming.values.get("STREAMING_EXPOSURE_VALUE")
        return p.exposure

    def _binning(self, device: str) -> tuple[int, int]:
        snap = self.link.prop(device, "CCD_BINNING")
        if snap is None:
            return 1, 1
        return (max(1, int(snap.values.get("HOR_BIN", 1))),
                max(1, int(snap.values.get("VER_BIN", 1))))

    def _raw_geometry(self, device: str, mode: str, bayer: str | None) -> RawGeometry | None:
        """Size of header-less frames: the stream frame, else the binned CCD frame."""
        frame = self.link.prop(device, "CCD_STREAM_FRAME") if mode == "stream" else None
        bx, by = 1, 1
        if frame is None:
            frame = self.link.prop(device, "CCD_FRAME")
            bx, by = self._binning(device)
        if frame is None:
            return None
        w = int(frame.values.get("WIDTH", 0)) // bx
        h = int(frame.values.get("HEIGHT", 0)) // by
        if w < 1 or h < 1:
            return None
        return RawGeometry(w, h, bayer)

    # --- capturing ----------------------------------------------------------------------

    def _deliver(self, device: str, setup: _Setup) -> int:
        """Decode and push the BLOBs received so far; returns how many arrived."""
        blobs = self.link.take_blobs()
        if not blobs:
            return 0
        geometry = self._raw_geometry(device, setup.mode, setup.bayer)
        for blob in blobs:
            if self.handler.handle(blob, geometry=geometry, exposure=setup.exposure,
                                   meta=setup.meta):
                self._session_frames += 1
        self.counters.dropped_queue = self.link.blobs_dropped
        self._log_stats()
        return len(blobs)

    def _log_stats(self, *, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._last_stats
        if not final and elapsed < self.params.stats_interval:
            return
        c = self.counters
        rate = (c.sent - self._stats_sent) / elapsed if elapsed > 0 else 0.0
        log.info("%s%d BLOBs received, %d frames sent (%.1f/s), %d undecodable, "
                 "%d dropped behind INDI, %d dropped at the socket, %d restarts",
                 "final: " if final else "", c.received, c.sent, rate, c.undecodable,
                 c.dropped_queue, c.dropped_send, c.reconnects)
        self._last_stats = now
        self._stats_sent = c.sent

    def _ended(self, device: str, losses: int) -> Outcome | None:
        """Why the session must end now, or None to go on."""
        if self.stop.is_set():
            return Outcome.STOPPED
        if self.link.server_losses != losses or not self.link.server_up:
            return Outcome.SERVER_LOST
        if not self._connected(device):
            return Outcome.DEVICE_LOST
        return None

    def _capture_stream(self, device: str, setup: _Setup, losses: int) -> Outcome:
        if not self._set_switch(device, "CCD_VIDEO_STREAM", "STREAM_ON", busy_ok=True):
            return self._ended(device, losses) or Outcome.FAILED
        log.info("%s: streaming", device)
        exposure = setup.exposure or 0.0
        limit = self.params.stall_timeout + exposure
        last = time.monotonic()
        while True:
            self._wait(lambda: self.link.pending_blobs() > 0 or self._commanded()
                       or self._ended(device, losses) is not None,
                       limit - (time.monotonic() - last))
            if self._deliver(device, setup):
                last = time.monotonic()
            outcome = self._ended(device, losses)
            if outcome is not None:
                return outcome
            if self._commanded() and self._obey(device, setup):
                self._set_switch(device, "CCD_VIDEO_STREAM", "STREAM_OFF")
                return Outcome.RECONFIGURE
            if time.monotonic() - last >= limit:
                if (self._session_frames == 0 and self.params.roi is not None
                        and not self._crop_roi_in_stream):
                    self._crop_roi_in_stream = True
                    log.warning("%s sends no stream frames with a camera ROI (%s); cropping "
                                "the stream instead", device,
                                self.link.last_message or "no message")
                else:
                    log.warning("%s: no stream frame for %.1f s (%s)", device, limit,
                                self.link.last_message or "no message")
                self._set_switch(device, "CCD_VIDEO_STREAM", "STREAM_OFF")
                return Outcome.STALLED

    def _start_exposure(self, device: str, exposure: float) -> bool:
        snap = self.link.prop(device, "CCD_EXPOSURE")
        if snap is None:
            return False
        lo, hi = snap.limits.get("CCD_EXPOSURE_VALUE", (exposure, exposure))
        value = min(max(exposure, lo), hi) if hi > lo else exposure
        return self.link.set_numbers(device, "CCD_EXPOSURE", {"CCD_EXPOSURE_VALUE": value})

    def _capture_exposures(self, device: str, setup: _Setup, losses: int) -> Outcome:
        exposure = setup.exposure or DEFAULT_EXPOSURE_S
        limit = self.params.stall_timeout + exposure
        if not self._start_exposure(device, exposure):
            return self._ended(device, losses) or Outcome.FAILED
        log.info("%s: exposing %.4g s frames", device, exposure)
        started = time.monotonic()
        retries = 0
        while True:
            self._wait(lambda: self.link.pending_blobs() > 0 or self._commanded()
                       or self._ended(device, losses) is not None,
                       limit - (time.monotonic() - started))
            outcome = self._ended(device, losses)
            if outcome is not None:
                self._deliver(device, setup)
                return outcome
            if self._commanded():
                if self._obey(device, setup):
                    self._deliver(device, setup)
                    return Outcome.RECONFIGURE
                exposure = setup.exposure or DEFAULT_EXPOSURE_S
                limit = self.params.stall_timeout + exposure
                if not self.link.pending_blobs():
                    continue
            if self.link.pending_blobs():
                # Start the next exposure first, so the camera works while we decode.
                self._start_exposure(device, exposure)
                started = time.monotonic()
                retries = 0
                self._deliver(device, setup)
                continue
            if time.monotonic() - started >= limit:
                retries += 1
                if retries > MAX_EXPOSURE_RETRIES:
                    log.warning("%s: %d exposures brought no frame (%s)", device, retries,
                                self.link.last_message or "no message")
                    return Outcome.STALLED
                log.warning("%s: no frame %.1f s after the exposure started; exposing again",
                            device, limit)
                self._start_exposure(device, exposure)
                started = time.monotonic()


    # --- camera control from the viewer (relayed by the daemon) -----------------------

    def _commanded(self) -> bool:
        """Whether a camera command from the daemon waits."""
        return self.channel is not None and self.channel.pending()

    def camera_state(self, device: str, setup: _Setup) -> dict[str, Any]:
        """The camera's current settings and their ranges, as the viewer shows them.

        ``{device, mode, exposure, gain, binning, roi}``: each setting is None when the
        device does not offer it, else ``{value, min, max}`` (``roi``: ``{value: [x, y,
        width, height], max: [width, height]}``, in sensor pixels).
        """
        def number(prop: str, element: str) -> dict[str, Any] | None:
            snap = self.link.prop(device, prop)
            if snap is None or element not in snap.values:
                return None
            lo, hi = snap.limits.get(element, (None, None))
            return {"value": snap.values[element], "min": lo, "max": hi}

        if setup.mode == "stream":
            exposure = number("STREAMING_EXPOSURE", "STREAMING_EXPOSURE_VALUE")
        else:
            exposure = number("CCD_EXPOSURE", "CCD_EXPOSURE_VALUE")
            if exposure is not None:  # the element counts down; the loop's value is ours
                exposure["value"] = setup.exposure
        gain_prop, gain_element = self._gain_element(device)
        gain = number(gain_prop, gain_element) if gain_prop else None
        binning = number("CCD_BINNING", "HOR_BIN")
        frame, info = self.link.prop(device, "CCD_FRAME"), self.link.prop(device, "CCD_INFO")
        roi = None
        if frame is not None:
            roi = {"value": [int(frame.values.get(k, 0)) for k in ("X", "Y", "WIDTH", "HEIGHT")],
                   "max": None}
            if info is not None and "CCD_MAX_X" in info.values:
                roi["max"] = [int(info.values["CCD_MAX_X"]), int(info.values["CCD_MAX_Y"])]
        return {"device": device, "mode": setup.mode, "exposure": exposure, "gain": gain,
                "binning": binning, "roi": roi}

    def _announce(self, device: str, setup: _Setup) -> None:
        if self.channel is not None:
            self.channel.announce(self.camera_state(device, setup))

    def _gain_element(self, device: str) -> tuple[str, str]:
        """The property and element of the gain (``("", "")`` if the device has none)."""
        if self.link.prop(device, "CCD_GAIN") is not None:
            return "CCD_GAIN", "GAIN"
        controls = self.link.prop(device, "CCD_CONTROLS")
        element = next((k for k in (controls.values if controls else {})
                        if k.lower() == "gain"), None)
        return ("CCD_CONTROLS", element) if element else ("", "")

    def _obey(self, device: str, setup: _Setup) -> bool:
        """Apply the camera commands waiting; True if the capture must be set up again
        (binning or ROI changed). Each command is answered with what was applied, what
        was refused and why, and the camera's settings now."""
        assert self.channel is not None
        restart = False
        for command in self.channel.commands():
            applied: dict[str, Any] = {}
            refused: dict[str, str] = {}
            state = self.camera_state(device, setup)
            for name, value in command["settings"].items():
                try:
                    restart |= self._apply_setting(device, setup, state, name, value)
                    applied[name] = value
                except ValueError as exc:
                    refused[name] = str(exc)
            if refused:
                log.warning("%s: camera settings refused: %s", device, refused)
            state = self.camera_state(device, setup)
            if restart:  # what it will be once set up again
                for name in ("binning", "roi"):
                    if name in applied and state.get(name):
                        state[name]["value"] = applied[name]
            self.channel.answer(command["id"], {"applied": applied, "refused": refused,
                                                "state": state})
            self.channel.announce(state)
        return restart

    def _apply_setting(self, device: str, setup: _Setup, state: dict[str, Any], name: str,
                       value: Any) -> bool:
        """Apply one setting; True if the capture must be set up again.

        Raises
        ------
        ValueError
            The device does not offer it, the value is out of its range, or the driver
            refused it; the message says which.
        """
        current = state.get(name)
        if current is None:
            raise ValueError(f"{device} has no {name} setting")
        if name == "roi":
            x, y, w, h = (int(v) for v in value)
            top = current.get("max")
            if x < 0 or y < 0 or w < 1 or h < 1:
                raise ValueError(f"roi {value} must have x, y >= 0 and width, height >= 1")
            if top and (x + w > top[0] or y + h > top[1]):
                raise ValueError(f"roi {value} goes beyond the {top[0]}x{top[1]} sensor")
            self.params = replace(self.params, roi=(x, y, w, h))
            return True
        lo, hi = current.get("min"), current.get("max")
        if lo is not None and hi is not None and hi > lo and not lo <= value <= hi:
            raise ValueError(f"{name} {value:g} is outside the camera's {lo:g}..{hi:g}")
        if name == "binning":
            if value != int(value):
                raise ValueError(f"binning must be a whole number, got {value:g}")
            self.params = replace(self.params, binning=int(value))
            return True
        if name == "gain":
            prop, element = self._gain_element(device)
            if not self._set_numbers(device, prop, {element: float(value)}):
                raise ValueError(f"{device} refused gain {value:g} "
                                 f"({self.link.last_message or 'no answer'})")
            self.params = replace(self.params, gain=float(value))
            return False
        if not value > 0:  # exposure
            raise ValueError(f"exposure must be > 0 seconds, got {value:g}")
        if setup.mode == "stream":
            if not self._set_numbers(device, "STREAMING_EXPOSURE",
                                     {"STREAMING_EXPOSURE_VALUE": float(value)}):
                raise ValueError(f"{device} refused exposure {value:g} s "
                                 f"({self.link.last_message or 'no answer'})")
        setup.exposure = float(value)
        self.params = replace(self.params, exposure=float(value))
        return False


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``live-stack source indi``."""
    from daemon.sources import add_pusher_arguments

    d = IndiParams()
    parser = argparse.ArgumentParser(
        prog="live-stack source indi",
        description="Push an INDI camera's frames to a live-stack daemon.",
    )
    parser.add_argument("--host", default=d.host, help="INDI server host (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port,
                        help="INDI server port (default %(default)s)")
    parser.add_argument("--device", default=d.device,
                        help="camera device name (default: the first camera listed)")
    parser.add_argument("--mode", choices=MODES, default=d.mode,
                        help="video stream, exposure loop, or auto (stream where offered)")
    parser.add_argument("--exposure", type=float, metavar="S",
                        help=f"exposure in seconds (exposure mode default {DEFAULT_EXPOSURE_S})")
    parser.add_argument("--gain", type=float, metavar="G", help="camera gain")
    parser.add_argument("--binning", type=int, metavar="N", help="binning factor")
    parser.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                        help="region of interest in sensor pixels")
    parser.add_argument("--device-timeout", type=float, default=d.device_timeout, metavar="S",
                        help="seconds to wait for the device at start (default %(default)s)")
    parser.add_argument("--stall-timeout", type=float, default=d.stall_timeout, metavar="S",
                        help="seconds without frames before the capture is restarted "
                             "(default %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--control", metavar="ENDPOINT", default=d.control,
                        help="the daemon's control endpoint, through which viewers set the "
                             "camera's exposure, gain, binning and ROI (default "
                             "%(default)s; '' for none)")
    add_pusher_arguments(parser)  # with --keys DIR, --server-key, --client-key
    return parser


def params_from_args(args: argparse.Namespace) -> IndiParams:
    """Build :class:`IndiParams` from parsed arguments (ValueError naming a bad one)."""
    return IndiParams(
        host=args.host, port=args.port, device=args.device, endpoint=args.to,
        control=args.control,
        mode=args.mode, exposure=args.exposure, gain=args.gain, binning=args.binning,
        roi=tuple(args.roi) if args.roi else None, device_timeout=args.device_timeout,
        stall_timeout=args.stall_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack source indi``; returns the exit status."""
    from daemon.sources import curve_from_args

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = params_from_args(args)
        curve = curve_from_args(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"live-stack source indi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from daemon.sources.indi_link import IndiLink
    except ImportError as exc:
        print(f"live-stack source indi: pyindi-client is not available ({exc}); install it "
              "with: pip install 'live-stack[indi]'", file=sys.stderr)
        return EXIT_NO_PYINDI
    source_id = args.source_id or f"indi:{params.device or 'camera'}@{params.host}:{params.port}"
    return run(params, link_class=IndiLink, curve=curve, source_id=source_id)


def run(params: IndiParams, *, link_class: Any, curve: Any = None, source_id: str = "") -> int:
    """Run the source until SIGTERM/SIGINT (see :func:`daemon.sources.run_source`).

    Parameters
    ----------
    params : IndiParams
    link_class : type
        :class:`daemon.sources.indi_link.IndiLink` (or a class with its interface).
    curve : daemon.security.ClientCurve, optional
        Keys for a daemon with CURVE on.
    source_id : str
        The ``source`` field of every frame.

    Returns
    -------
    int
        The exit status.
    """
    import zmq

    from daemon.lifecycle import SystemdNotifier
    from daemon.sources import run_source

    context = zmq.Context()
    sender = FrameSender(context, params.endpoint, hwm=params.send_hwm, curve=curve)
    handler = BlobHandler(sender.send, source_id=source_id, counters=SourceCounters())
    link = link_class(params.host, params.port, queue_size=params.queue_size,
                      connect_timeout=params.connect_timeout)
    notifier = SystemdNotifier()
    channel = None
    if params.control:
        from daemon.sources.indi_camera import CameraChannel

        channel = CameraChannel(context, params.control, source_id=source_id,
                                wake=link.wake, curve=curve)

    def work(stop: threading.Event) -> int:
        source = IndiSource(params, link, handler, stop,
                            ping=lambda: notifier.notify("WATCHDOG=1"),
                            ping_interval=notifier.watchdog_interval, channel=channel)
        notifier.notify("READY=1")
        return source.run()

    try:
        return run_source(work, name="indi", on_stop=link.wake)
    finally:
        notifier.notify("STOPPING=1")
        if channel is not None:
            channel.close()
        sender.close()
        context.term()
        notifier.close()
