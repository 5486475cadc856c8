"""What the daemon writes to its output folder.

A daemon run is a *session*, named by its start time (``YYYYmmdd-HHMMSS``). In the output
folder it writes:

- ``stack-SESSION.EXT``: the live stack (16-bit TIFF, PNG or FITS), replaced atomically
  every ``save_interval`` seconds and at shutdown; after a ``reset`` the next stack goes
  to ``stack-SESSION-2.EXT`` and so on, so no stack is overwritten by another;
- ``session-SESSION.log``: the session log;
- ``raw-SESSION.ser``: with ``record`` on, every frame received, with its capture time
  (a new ``raw-SESSION-2.ser`` and so on whenever the frame size or format changes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from daemon.protocol import STACK_SCALE

log = logging.getLogger(__name__)

#: strftime format of session names.
SESSION_FORMAT = "%Y%m%d-%H%M%S"


def new_session(directory: Path, *, now: float | None = None) -> str:
    """Return a session name not yet used in ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = time.strftime(SESSION_FORMAT, time.localtime(time.time() if now is None else now))
    name, k = base, 1
    while any(directory.glob(f"*-{name}.*")) or any(directory.glob(f"*-{name}-*")):
        k += 1
        name = f"{base}.{k}"
    return name


def numbered(directory: Path, prefix: str, session: str, number: int, ext: str) -> Path:
    """``PREFIX-SESSION.EXT`` for number 1, ``PREFIX-SESSION-N.EXT`` after that."""
    suffix = "" if number <= 1 else f"-{number}"
    return directory / f"{prefix}-{session}{suffix}.{ext}"


class _SessionLog(logging.FileHandler):
    """The session log handler; remembers the ``daemon`` logger's level to restore."""

    previous_level = logging.NOTSET


def attach_session_log(path: Path, *, level: int) -> logging.Handler:
    """Send the ``daemon`` loggers' records of ``level`` and above to ``path``.

    The ``daemon`` logger is set to let those records through (whatever the root
    logger's level); :func:`detach_session_log` restores it.
    """
    handler = _SessionLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger("daemon")
    handler.previous_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    return handler


def detach_session_log(handler: logging.Handler) -> None:
    """Undo :func:`attach_session_log`."""
    logger = logging.getLogger("daemon")
    logger.removeHandler(handler)
    logger.setLevel(getattr(handler, "previous_level", logging.NOTSET))
    handler.close()


def save_stack(path: Path, image: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Write a float32 ``[0, 1]`` stack to ``path`` atomically (format by extension)."""
    from live_stack.io.images import write_image

    write_image(path, image, metadata=metadata, atomic=True)
    return path


def frame_for_ser(frame: np.ndarray) -> np.ndarray:
    """A frame as SER stores it: uint8 and uint16 as they are, float ``[0, 1]`` as uint16."""
    if frame.dtype.kind == "f":
        return (np.clip(frame, 0.0, 1.0) * np.float32(STACK_SCALE) + np.float32(0.5)).astype(
            np.uint16
        )
    return frame


class RawRecorder:
    """Record every frame received into SER files, with capture times.

    A new file is started whenever the frame size, layout or dtype changes. The SER
    writer keeps the header's frame count current, so a recording cut short by a crash
    reads back up to its last complete frame.

    Parameters
    ----------
    directory : Path
        Output folder.
    session : str
        Session name used in the file names.
    """

    def __init__(self, directory: Path, session: str) -> None:
        self._directory = directory
        self._session = session
        self._writer: Any = None
        self._format: tuple[Any, ...] | None = None
        self._files = 0
        self.path: Path | None = None  # the file being written
        self.frames = 0  # frames written into it
        self.total = 0  # frames written in this session
        self.failed: str | None = None  # why recording stopped, if it did

    def write(self, header: dict[str, Any], frame: np.ndarray) -> None:
        """Append one frame; on a write error recording stops (logged, never raised)."""
        if self.failed is not None:
            return
        try:
            self._write(header, frame)
        except Exception as exc:  # disk full, permissions...: keep the daemon running
            self.failed = f"{type(exc).__name__}: {exc}"
            log.error("raw recording into %s stopped: %s", self.path, self.failed)
            self.close()

    def _write(self, header: dict[str, Any], frame: np.ndarray) -> None:
        data = frame_for_ser(frame)
        bits = 8 if data.dtype == np.uint8 else 16  # 16-bit: no value range to violate
        fmt = (data.shape, header["layout"], bits)
        if fmt != self._format:
            self.close()
            self._open(data, header["layout"], bits)
            self._format = fmt
        self._writer.write(data, timestamp=float(header["time"]))
        self.frames += 1
        self.total += 1

    def _open(self, data: np.ndarray, layout: str, bits: int) -> None:
        from live_stack.io.ser import SerWriter

        self._files += 1
        self.path = numbered(self._directory, "raw", self._session, self._files, "ser")
        self._writer = SerWriter(self.path, width=data.shape[1], height=data.shape[0],
                                 layout=layout, bit_depth=bits, instrument="live-stack daemon")
        self.frames = 0
        log.info("recording raw frames (%dx%d %s, %d bits) into %s", data.shape[1],
                 data.shape[0], layout, bits, self.path)

    def close(self) -> None:
        """Close the current file (its timestamp trailer is written)."""
        writer, self._writer, self._format = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:  # keep shutting down
                log.error("closing the raw recording %s failed: %s", self.path, exc)

    def as_dict(self) -> dict[str, Any]:
        """Status of the recording."""
        return {"path": str(self.path) if self.path else None, "frames": self.frames,
                "total": self.total, "failed": self.failed}
