"""The PyIndi side of the INDI source: a client whose callbacks only record what happened.

PyIndi calls :class:`IndiLink`'s callbacks on INDI's own listener thread. They never
block and never raise (an exception escaping a SWIG director callback would abort the
process): they copy what arrived into plain Python state under one
:class:`threading.Condition` and wake whoever waits on it. Everything else (deciding,
sending settings, decoding) happens on the caller's thread, which waits on that
condition with a timeout.

PyIndi quirks handled here:

- ``getblobdata()`` copies ``getSize()`` bytes, which for a compressed BLOB is the
  *uncompressed* size, past the end of the received data; for those the bytes are read
  with ``getBlobAsString()`` (SWIG decodes them with ``surrogateescape``, so encoding
  them back gives the exact bytes).
- After ``serverDisconnected`` the client still believes it is connected:
  ``disconnectServer()`` must be called before ``connectServer()`` works again.
- The client object must stay referenced for as long as INDI's thread may call it.
- BLOBs must be enabled per connection with ``setBLOBMode``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import PyIndi

from daemon.sources.indi_decode import ReceivedBlob

log = logging.getLogger("live_stack.source.indi")

#: PyIndi property states -> names.
STATE_NAMES = {
    PyIndi.IPS_IDLE: "idle",
    PyIndi.IPS_OK: "ok",
    PyIndi.IPS_BUSY: "busy",
    PyIndi.IPS_ALERT: "alert",
}

#: Microseconds per second, for ``setConnectionTimeout``.
_USEC = 1_000_000


@dataclass(frozen=True)
class PropertySnapshot:
    """A copy of one INDI property's state and values, safe to read from any thread."""

    kind: str  # "number", "switch", "text", "light" or "blob"
    state: str  # "idle", "ok", "busy" or "alert"
    values: Mapping[str, Any] = field(default_factory=dict)  # element -> float/bool/str
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # numbers' range
    revision: int = 0  # the link's revision counter when this snapshot was taken


def _snapshot(prop: Any, revision: int) -> PropertySnapshot:
    """Copy a PyIndi property (called on INDI's thread)."""
    kind = prop.getType()
    state = STATE_NAMES.get(prop.getState(), "idle")
    values: dict[str, Any] = {}
    limits: dict[str, tuple[float, float]] = {}
    if kind == PyIndi.INDI_NUMBER:
        for w in PyIndi.PropertyNumber(prop):
            values[w.getName()] = float(w.getValue())
            limits[w.getName()] = (float(w.getMin()), float(w.getMax()))
        name = "number"
    elif kind == PyIndi.INDI_SWITCH:
        for w in PyIndi.PropertySwitch(prop):
            values[w.getName()] = w.getState() == PyIndi.ISS_ON
        name = "switch"
    elif kind == PyIndi.INDI_TEXT:
        for w in PyIndi.PropertyText(prop):
            values[w.getName()] = str(w.getText())
        name = "text"
    elif kind == PyIndi.INDI_LIGHT:
        name = "light"
    else:
        name = "blob"
    return PropertySnapshot(name, state, values, limits, revision)


def _blob_bytes(widget: Any) -> bytes | bytearray:
    """The received bytes of a BLOB element (see the module's notes on PyIndi)."""
    length = widget.getBlobLen()
    if length == widget.getSize():
        return widget.getblobdata()
    return widget.getBlobAsString().encode("utf-8", "surrogateescape")


class IndiLink(PyIndi.BaseClient):
    """A PyIndi client that records devices, properties and BLOBs for another thread.

    Parameters
    ----------
    host, port :
        The INDI server.
    queue_size : int
        Most BLOBs kept waiting for the consumer; when full the oldest is dropped and
        counted in :attr:`blobs_dropped`.
    connect_timeout : float
        Seconds ``connectServer`` may block.
    """

    def __init__(self, host: str, port: int, *, queue_size: int, connect_timeout: float) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.setServer(host, int(port))
        seconds = int(connect_timeout)
        self.setConnectionTimeout(seconds, int((connect_timeout - seconds) * _USEC))
        self.cond = threading.Condition()
        self._queue_size = queue_size
        self._blobs: deque[ReceivedBlob] = deque()
        self._blob_filter: tuple[str, str] | None = None
        self._blob_seq = 0
        self._props: dict[tuple[str, str], PropertySnapshot] = {}
        self._devices: dict[str, None] = {}  # insertion-ordered set
        self._server_up = False
        self._closing = False
        #: bumped on every recorded change
        self.revision = 0
        #: bumped when a property or device is defined or deleted
        self.definitions = 0
        #: times the server connection was lost (not counting our own disconnects)
        self.server_losses = 0
        #: BLOBs dropped because the consumer fell behind
        self.blobs_dropped = 0
        #: the last message a device sent, for diagnostics
        self.last_message = ""

    # --- callbacks (INDI's thread): record, notify, never raise -------------------------

    def _changed(self, *, definition: bool = False) -> None:
        """Bump the counters and wake waiters; call with ``cond`` held."""
        self.revision += 1
        if definition:
            self.definitions += 1
        self.cond.notify_all()

    def newDevice(self, device: Any) -> None:  # noqa: N802 - PyIndi's name
        try:
            with self.cond:
                self._devices[device.getDeviceName()] = None
                self._changed(definition=True)
        except Exception:  # pragma: no cover - never let an exception reach C++
            log.exception("INDI newDevice callback failed")

    def removeDevice(self, device: Any) -> None:  # noqa: N802
        try:
            name = device.getDeviceName()
            with self.cond:
                self._devices.pop(name, None)
                for key in [k for k in self._props if k[0] == name]:
                    del self._props[key]
                self._changed(definition=True)
        except Exception:  # pragma: no cover
            log.exception("INDI removeDevice callback failed")

    def newProperty(self, prop: Any) -> None:  # noqa: N802
        self._record(prop, definition=True)

    def updateProperty(self, prop: Any) -> None:  # noqa: N802
        try:
            if prop.getType() == PyIndi.INDI_BLOB:
                self._take_blob(prop)
                return
        except Exception:  # pragma: no cover
            log.exception("INDI BLOB callback failed")
            return
        self._record(prop, definition=False)

    def removeProperty(self, prop: Any) -> None:  # noqa: N802
        try:
            key = (prop.getDeviceName(), prop.getName())
            with self.cond:
                self._props.pop(key, None)
                self._changed(definition=True)
        except Exception:  # pragma: no cover
            log.exception("INDI removeProperty callback failed")

    def serverConnected(self) -> None:  # noqa: N802
        try:
            with self.cond:
                self._server_up = True
                self._changed()
        except Exception:  # pragma: no cover
            log.exception("INDI serverConnected callback failed")

    def serverDisconnected(self, exit_code: int) -> None:  # noqa: N802
        try:
            with self.cond:
                self._server_up = False
                if not self._closing:
                    self.server_losses += 1
                self._devices.clear()
                self._props.clear()
                self._changed(definition=True)
        except Exception:  # pragma: no cover
            log.exception("INDI serverDisconnected callback failed")

    def newMessage(self, device: Any, message_id: int) -> None:  # noqa: N802
        try:
            text = device.messageQueue(message_id)
            self.last_message = f"{device.getDeviceName()}: {text}"
            log.debug("INDI message from %s", self.last_message)
        except Exception:  # pragma: no cover
            log.exception("INDI newMessage callback failed")

    def _record(self, prop: Any, *, definition: bool) -> None:
        try:
            key = (prop.getDeviceName(), prop.getName())
            with self.cond:
                self._props[key] = _snapshot(prop, self.revision + 1)
                self._changed(definition=definition)
        except Exception:  # pragma: no cover
            log.exception("INDI property callback failed")

    def _take_blob(self, prop: Any) -> None:
        arrival = time.time()
        key = (prop.getDeviceName(), prop.getName())
        if key != self._blob_filter:
            return
        for widget in PyIndi.PropertyBlob(prop):
            if widget.getBlobLen() <= 0:
                continue
            data = _blob_bytes(widget)
            with self.cond:
                blob = ReceivedBlob(
                    data=data, fmt=str(widget.getFormat()), size=int(widget.getSize()),
                    arrival=arrival, seq=self._blob_seq,
                )
                self._blob_seq += 1
                if len(self._blobs) >= self._queue_size:
                    self._blobs.popleft()
                    self.blobs_dropped += 1
                self._blobs.append(blob)
                self._changed()

    # --- the consumer's side --------------------------------------------------------------

    @property
    def server_up(self) -> bool:
        """True while connected to the INDI server."""
        with self.cond:
            return self._server_up

    def connect(self) -> bool:
        """(Re)connect to the server; False if it cannot be reached now."""
        if self.isServerConnected():
            self.disconnect()  # clears the stale state left by a lost connection
        return bool(self.connectServer())

    def disconnect(self) -> None:
        """Disconnect from the server (not counted as a loss)."""
        with self.cond:
            self._closing = True
        try:
            self.disconnectServer()
        finally:
            with self.cond:
                self._closing = False
                self._server_up = False
                self._changed()

    def wake(self) -> None:
        """Wake every waiter (e.g. when a stop was requested)."""
        with self.cond:
            self._changed()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (evaluated with the lock held) or ``timeout``."""
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout=max(0.0, timeout)))

    def devices(self) -> list[str]:
        """Names of the devices the server announced, in order."""
        with self.cond:
            return list(self._devices)

    def prop(self, device: str, name: str) -> PropertySnapshot | None:
        """The latest snapshot of a property, or None if the device does not define it."""
        with self.cond:
            return self._props.get((device, name))

    def pending_blobs(self) -> int:
        """Number of BLOBs waiting (call with or without the lock)."""
        return len(self._blobs)

    def take_blobs(self) -> list[ReceivedBlob]:
        """Remove and return the BLOBs received so far, oldest first."""
        with self.cond:
            blobs = list(self._blobs)
            self._blobs.clear()
            return blobs

    def enable_blobs(self, device: str, name: str) -> None:
        """Receive the BLOBs of ``device``'s property ``name`` (alongside other updates)."""
        with self.cond:
            self._blob_filter = (device, name)
        self.setBLOBMode(PyIndi.B_ALSO, device, name)

    def set_numbers(self, device: str, name: str, values: Mapping[str, float]) -> bool:
        """Send new values for elements of a number property; False if it is undefined.

        The message is built on a property of its own: the device's copy belongs to
        INDI's thread, which may update it (a countdown, say) while we fill it in.
        """
        if self.prop(device, name) is None:
            return False
        prop = PyIndi.PropertyNumber(len(values))
        prop.setDeviceName(device)
        prop.setName(name)
        for widget, (element, value) in zip(prop, values.items(), strict=True):
            widget.setName(element)
            widget.setValue(float(value))
        self.sendNewNumber(prop)
        return True

    def set_switch(self, device: str, name: str, element: str) -> bool:
        """Turn ``element`` of a switch property on, the others off; False if undefined."""
        snap = self.prop(device, name)
        if snap is None or element not in snap.values:
            return False
        prop = PyIndi.PropertySwitch(len(snap.values))
        prop.setDeviceName(device)
        prop.setName(name)
        for widget, other in zip(prop, snap.values, strict=True):
            widget.setName(other)
            widget.setState(PyIndi.ISS_ON if other == element else PyIndi.ISS_OFF)
        self.sendNewSwitch(prop)
        return True

    def connect_device(self, device: str) -> None:
        """Ask the driver to connect ``device``."""
        self.connectDevice(device)
