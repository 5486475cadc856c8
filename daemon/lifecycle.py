"""Process life cycle: stopping on SIGTERM/SIGINT, and systemd readiness notifications.

:class:`StopSignal` turns SIGTERM and SIGINT into a byte on a socket pair (Python's
``signal.set_wakeup_fd``), so the main thread waits for a stop with ``select`` and no
signal handler ever touches a lock. Other threads ask for a stop with
:meth:`StopSignal.trigger`.

:class:`SystemdNotifier` sends ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1`` datagrams to
``$NOTIFY_SOCKET`` (the sd_notify protocol) and does nothing when not run by systemd.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from types import FrameType

#: Signals that stop a daemon or a source.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Microseconds per second, for $WATCHDOG_USEC.
_USEC = 1_000_000


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Signal handler that does nothing: the wakeup fd carries the signal."""


class StopSignal:
    """Wait for SIGTERM/SIGINT or an explicit :meth:`trigger`, whichever comes first.

    Use as a context manager in the main thread; handlers and the wakeup fd are restored
    on exit. The :attr:`event` is set once a stop was requested, for worker threads.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._old_handlers: dict[int, object] = {}
        self._old_fd: int | None = None
        self.signal: int | None = None  # the signal that stopped us, if any

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._old_fd = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
            for sig in STOP_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, _ignore)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        self._rsock.close()
        self._wsock.close()

    def trigger(self) -> None:
        """Ask for a stop (from any thread)."""
        self.event.set()
        try:
            self._wsock.send(b"\0")
        except (BlockingIOError, OSError):  # already full of wake-ups, or closed
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once a stop was requested."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.event.is_set():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._rsock], [], [], left)
            if not ready:
                break
            try:
                data = self._rsock.recv(64)
            except (BlockingIOError, InterruptedError):
                data = b""
            for byte in data:  # signal numbers from set_wakeup_fd; 0 from trigger()
                if byte in STOP_SIGNALS:
                    self.signal = byte
                    self.event.set()
                elif byte == 0:
                    self.event.set()
        return self.event.is_set()


class SystemdNotifier:
    """Send sd_notify datagrams to ``$NOTIFY_SOCKET``; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        if addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        #: seconds between WATCHDOG=1 pings (half the systemd timeout), or None
        self.watchdog_interval = int(usec) / _USEC / 2 if watched else None

    @property
    def enabled(self) -> bool:
        """True when run by systemd with a notify socket."""
        return self._sock is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1"``); False if not sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(state.encode(), self._addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
