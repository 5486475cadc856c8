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
- A ``BaseClient``'s XML parser lives as long as the client and is never reset, not
  even by ``connectServer()``. A connection that drops in the middle of a message (an
  indiserver killed while sending a BLOB) leaves that message's start in the parser,
  and everything a later connection of the same client receives is taken as the rest
  of it: no message is dispatched again, so the client never sees a device again. Each
  connection therefore gets a client of its own (:class:`_Connection`); the link keeps
  the recorded state across them.
- After ``serverDisconnected`` the client still believes it is connected: it is sent
  ``disconnectServer()`` all the same before a new client takes over.
- A client object must stay referenced for as long as INDI's thread may call it: the
  last few replaced ones are kept, and a client refers to the link only weakly (so no
  reference cycle leaves its destruction to the garbage collector, on any thread).
- BLOBs must be enabled per connection with ``setBLOBMode``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
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
#: Replaced clients kept referenced (see the module's notes): a client is destroyed only
#: after this many later connection attempts, long after its thread has ended.
RETIRED_CLIENTS = 2


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


class _Connection(PyIndi.BaseClient):
    """The PyIndi client of one server connection: hands its callbacks to the link.

    Called on INDI's thread; the link ignores the callbacks of a client it has replaced.
    """

    def __init__(self, link: IndiLink) -> None:
        super().__init__()
        self._link = weakref.ref(link)

    def _call(self, name: str, *args: Any) -> None:
        try:
            link = self._link()
            if link is not None:
                getattr(link, name)(self, *args)
        except Exception:  # pragma: no cover - never let an exception reach C++
            log.exception("INDI %s callback failed", name)

    def newDevice(self, device: Any) -> None:  # noqa: N802 - PyIndi's name
        self._call("_new_device", device)

    def removeDevice(self, device: Any) -> None:  # noqa: N802
        self._call("_remove_device", device)

    def newProperty(self, prop: Any) -> None:  # noqa: N802
        self._call("_record", prop, True)

    def updateProperty(self, prop: Any) -> None:  # noqa: N802
        self._call("_update_property", prop)

    def removeProperty(self, prop: Any) -> None:  # noqa: N802
        self._call("_remove_property", prop)

    def serverConnected(self) -> None:  # noqa: N802
        self._call("_server_connected")

    def serverDisconnected(self, exit_code: int) -> None:  # noqa: N802
        self._call("_server_disconnected")

    def newMessage(self, device: Any, message_id: int) -> None:  # noqa: N802
        self._call("_new_message", device, message_id)


class IndiLink:
    """An INDI client that records devices, properties and BLOBs for another thread.

    Each connection to the server is made by a new PyIndi client (see the module's
    notes); what they record is kept here.

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
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self._host = host
        self._port = int(port)
        seconds = int(connect_timeout)
        self._timeout = (seconds, int((connect_timeout - seconds) * _USEC))
        self._client: _Connection | None = None  # the current connection's client
        self._retired: deque[_Connection] = deque(maxlen=RETIRED_CLIENTS)
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

    # --- callbacks (INDI's thread, through _Connection): record, notify ----------------
    # Each takes the client it came from first and, with ``cond`` held, ignores it unless
    # that is the current one. Exceptions are caught and logged by _Connection.

    def _changed(self, *, definition: bool = False) -> None:
        """Bump the counters and wake waiters; call with ``cond`` held."""
        self.revision += 1
        if definition:
            self.definitions += 1
        self.cond.notify_all()

    def _new_device(self, client: _Connection, device: Any) -> None:
        name = device.getDeviceName()
        with self.cond:
            if client is self._client:
                self._devices[name] = None
                self._changed(definition=True)

    def _remove_device(self, client: _Connection, device: Any) -> None:
        name = device.getDeviceName()
        with self.cond:
            if client is self._client:
                self._devices.pop(name, None)
                for key in [k for k in self._props if k[0] == name]:
                    del self._props[key]
                self._changed(definition=True)

    def _update_property(self, client: _Connection, prop: Any) -> None:
        if prop.getType() == PyIndi.INDI_BLOB:
            self._take_blob(client, prop)
        else:
            self._record(client, prop, False)

    def _remove_property(self, client: _Connection, prop: Any) -> None:
        key = (prop.getDeviceName(), prop.getName())
        with self.cond:
            if client is self._client:
                self._props.pop(key, None)
                self._changed(definition=True)

    def _server_connected(self, client: _Connection) -> None:
        with self.cond:
            if client is self._client:
                self._server_up = True
                self._changed()

    def _server_disconnected(self, client: _Connection) -> None:
        with self.cond:
            if client is not self._client:
                return
            self._server_up = False
            if not self._closing:
                self.server_losses += 1
            self._devices.clear()
            self._props.clear()
            self._changed(definition=True)

    def _new_message(self, client: _Connection, device: Any, message_id: int) -> None:
        if client is not self._client:
            return
        text = device.messageQueue(message_id)
        self.last_message = f"{device.getDeviceName()}: {text}"
        log.debug("INDI message from %s", self.last_message)

    def _record(self, client: _Connection, prop: Any, definition: bool) -> None:
        key = (prop.getDeviceName(), prop.getName())
        with self.cond:
            if client is self._client:
                self._props[key] = _snapshot(prop, self.revision + 1)
                self._changed(definition=definition)

    def _take_blob(self, client: _Connection, prop: Any) -> None:
        arrival = time.time()
        key = (prop.getDeviceName(), prop.getName())
        if key != self._blob_filter or client is not self._client:
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
        """(Re)connect to the server with a new client; False if it cannot be reached now.

        Never reuses the previous connection's client: its XML parser may hold half a
        message (see the module's notes).
        """
        if self._client is not None and self._client.isServerConnected():
            self.disconnect()  # also after a lost connection (see the module's notes)
        client = _Connection(self)
        client.setServer(self._host, self._port)
        client.setConnectionTimeout(*self._timeout)
        previous = self._client
        with self.cond:  # from now on the previous client's callbacks are ignored
            self._client = client
            self._server_up = False
            self._devices.clear()
            self._props.clear()
            self._changed(definition=True)
        if previous is not None:
            # Drops (destroys) the oldest one, outside the lock: its destructor joins its
            # thread, which ended attempts ago.
            self._retired.append(previous)
        return bool(client.connectServer())

    def disconnect(self) -> None:
        """Disconnect from the server (not counted as a loss)."""
        client = self._client
        with self.cond:
            self._closing = True
        try:
            if client is not None:
                client.disconnectServer()
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
        if self._client is not None:
            self._client.setBLOBMode(PyIndi.B_ALSO, device, name)

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
        return self._send(lambda client: client.sendNewNumber(prop))

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
        return self._send(lambda client: client.sendNewSwitch(prop))

    def connect_device(self, device: str) -> None:
        """Ask the driver to connect ``device``."""
        self._send(lambda client: client.connectDevice(device))

    def _send(self, send: Callable[[_Connection], Any]) -> bool:
        """Send something through the current client; False if there is none."""
        client = self._client
        if client is None:
            return False
        send(client)
        return True
