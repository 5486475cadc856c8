"""What the daemon writes to its output folder.

A daemon run is a *session*, named by its start time (``YYYYmmdd-HHMMSS``). In the output
folder it writes:

- ``stack-SESSION-NNNN-HHMMSS.EXT``: the stack history. Every save (every
  ``save_interval`` seconds when the stack changed, on a ``save`` request, before a
  ``reset`` and at shutdown) writes a new file (16-bit TIFF, PNG or FITS, written
  atomically), numbered ``NNNN`` from 0001 in the session and stamped with the local time
  of the save; no stack is ever overwritten;
- ``stacks-SESSION.jsonl``: the session's stack index, one JSON object per stack file
  (see :func:`index_record` and docs/protocol.md), appended after each file is written;
- ``session-SESSION.log``: the session log;
- ``raw-SESSION.ser``: with ``record`` on, every frame received, with its capture time
  (a new ``raw-SESSION-2.ser`` and so on whenever the frame size or format changes).
  Recording stops cleanly, with a valid file, when the disk's free space falls under
  ``output.min_free_mib``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from daemon.protocol import STACK_SCALE

log = logging.getLogger(__name__)

#: strftime format of session names.
SESSION_FORMAT = "%Y%m%d-%H%M%S"

#: strftime format of the time stamp in a stack file's name (local time of the save).
STACK_TIME_FORMAT = "%H%M%S"

#: Version of the stack index records (the ``v`` field of each line).
INDEX_VERSION = 1

#: Bytes in a MiB (the free-space thresholds are configured in MiB).
MIB = 1 << 20

#: Seconds after which the recorder measures the free space again even if its estimate
#: says there is room (other programs write to the same disk).
FREE_SPACE_RECHECK = 1.0

#: errno values that mean "the disk is full" (no room, or the user's quota used up).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class SaveError(RuntimeError):
    """A stack could not be written; ``no_room`` when only because the disk is full."""

    def __init__(self, message: str, *, no_room: bool = False) -> None:
        super().__init__(message)
        self.no_room = no_room


def describe_os_error(exc: OSError) -> str:
    """``strerror`` of an OSError (``No space left on device``), or its text."""
    return exc.strerror or str(exc)


def check_writable(directory: Path) -> None:
    """Raise OSError unless a file can be created in ``directory`` (left as it was).

    A probe file is created and removed, so that a read-only mount, missing permissions
    and a full disk are found before anything else is written.
    """
    fd, probe = tempfile.mkstemp(prefix=".live-stack-probe-", dir=directory)
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)
        os.unlink(probe)


def free_bytes(directory: Path) -> int | None:
    """Free bytes for an unprivileged writer on ``directory``'s disk (None if unknown)."""
    try:
        return int(shutil.disk_usage(directory).free)
    except OSError:
        return None


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


def stack_file(directory: Path, session: str, number: int, when: float, ext: str) -> Path:
    """``stack-SESSION-NNNN-HHMMSS.EXT``: the ``number``-th stack saved in the session."""
    stamp = time.strftime(STACK_TIME_FORMAT, time.localtime(when))
    return directory / f"stack-{session}-{number:04d}-{stamp}.{ext}"


def index_file(directory: Path, session: str) -> Path:
    """``stacks-SESSION.jsonl``: the session's stack index."""
    return directory / f"stacks-{session}.jsonl"


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats made None (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def index_record(*, file: Path, number: int, reason: str, time: float,
                 metadata: dict[str, Any], quality: dict[str, Any],
                 params: dict[str, Any]) -> dict[str, Any]:
    """One line of the stack index (documented in docs/protocol.md, "Stack history").

    ``metadata`` is what the file itself records (session, segment, frame counts,
    newest capture time); ``quality`` the stacker's quality statistics and ``params``
    its parameters at the save.
    """
    return _finite({
        "v": INDEX_VERSION,
        "file": file.name,
        "number": number,
        "reason": reason,
        "time": time,
        "session": metadata["session"],
        "segment": metadata["segment"],
        "frames_processed": metadata["frames_processed"],
        "frames_admitted": metadata["frames_admitted"],
        "frames_in_buffer": metadata["frames_in_buffer"],
        "newest_capture_time": metadata["newest_capture_time"] or None,
        "quality": quality,
        "params": params,
    })


def append_index(path: Path, record: dict[str, Any]) -> None:
    """Append one record to the index as a JSON line (all or nothing, synced to disk).

    On a write error (a full disk) the file is cut back to the size it had, so that no
    torn line is left for the next record to be glued to; the OSError is raised.
    """
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_index(path: Path) -> list[dict[str, Any]]:
    """The records of a stack index, oldest first.

    A line that is not a JSON object (a torn last line after a crash) is skipped; a
    missing file is an empty index.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class _SessionLog(logging.FileHandler):
    """The session log handler.

    Remembers the ``daemon`` logger's level to restore. When the file cannot be written
    (a full or read-only disk) it says so once, in one line on stderr, and drops the
    file's records from then on (counted in :attr:`dropped`; the records still reach
    the other handlers, e.g. the journal), instead of printing logging's traceback
    block for every record.
    """

    previous_level = logging.NOTSET

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failed: str | None = None  # why the file stopped being written
        self.dropped = 0  # records not written since

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            self.dropped += 1
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self.failed = describe_os_error(exc)
        self.dropped += 1
        print(f"live-stack daemon: the session log {self.baseFilename} cannot be written "
              f"({self.failed}); its records go only to the other logs from now on",
              file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush onto a full disk: already reported
            self.stream = None  # type: ignore[assignment]


def attach_session_log(path: Path, *, level: int) -> logging.Handler:
    """Send the ``daemon`` loggers' records of ``level`` and above to ``path``.

    The ``daemon`` logger is set to let those records through (whatever the root
    logger's level); :func:`detach_session_log` restores it.
    """
    handler = _SessionLog(path)
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

    Before each frame the recorder makes sure the disk keeps ``min_free`` bytes free
    after the frame and the file's timestamp trailer are written (an estimate, measured
    again at least every :data:`FREE_SPACE_RECHECK` seconds and whenever it says the
    room is running out); when it would not, recording stops cleanly: the file is
    closed with its trailer, and its header counts exactly the frames in it. Should a
    write fail all the same (another program filled the disk), the file is cut back to
    its complete frames.

    Parameters
    ----------
    directory : Path
        Output folder.
    session : str
        Session name used in the file names.
    min_free : int
        Bytes to leave free on the disk (``output.min_free_mib``).
    """

    def __init__(self, directory: Path, session: str, *, min_free: int = 0) -> None:
        self._directory = directory
        self._session = session
        self._min_free = int(min_free)
        self._writer: Any = None
        self._format: tuple[Any, ...] | None = None
        self._files = 0
        self._free: int | None = None  # estimated free bytes on the disk
        self._measured = -math.inf  # time.monotonic() of the last measurement
        self._frame_bytes = 0  # bytes of one frame of the current file
        self.path: Path | None = None  # the file being written
        self.frames = 0  # frames written into it
        self.total = 0  # frames written in this session
        self.failed: str | None = None  # why recording stopped, if it did
        self.stopped_time: float | None = None  # when it stopped (Unix time)

    def write(self, header: dict[str, Any], frame: np.ndarray) -> None:
        """Append one frame; on a write error recording stops (logged, never raised)."""
        if self.failed is not None:
            return
        try:
            self._write(header, frame)
        except OSError as exc:  # disk full, permissions...: keep the daemon running
            self._stop(f"{describe_os_error(exc)} (frame {self.frames + 1} of {self.path})")
            self._cut_back()
        except Exception as exc:
            self._stop(f"{type(exc).__name__}: {exc}")

    def _stop(self, why: str) -> None:
        self.failed = why
        self.stopped_time = time.time()
        log.error("raw recording into %s stopped after %d frames: %s", self.path,
                  self.frames, why)
        self.close()

    def _room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more (frame and trailer) still leave ``min_free`` free."""
        now = time.monotonic()
        enough = self._free is not None and self._free - nbytes >= self._min_free
        if not enough or now - self._measured >= FREE_SPACE_RECHECK:
            self._free = free_bytes(self._directory)
            self._measured = now
            if self._free is None:  # cannot tell: let the write itself find out
                return True
        return self._free - nbytes >= self._min_free

    def _write(self, header: dict[str, Any], frame: np.ndarray) -> None:
        from live_stack.io.ser import TIMESTAMP_SIZE

        data = frame_for_ser(frame)
        bits = 8 if data.dtype == np.uint8 else 16  # 16-bit: no value range to violate
        fmt = (data.shape, header["layout"], bits)
        # this frame, its timestamp, and the trailer of a new file's first frames
        need = data.nbytes + TIMESTAMP_SIZE * (1 if fmt == self._format else self.frames + 1)
        if not self._room_for(need):
            free = -1 if self._free is None else self._free
            self._stop(f"the disk is nearly full: {free / MIB:.1f} MiB free, "
                       f"output.min_free_mib is {self._min_free / MIB:g}")
            return
        if fmt != self._format:
            self.close()
            self._open(data, header["layout"], bits)
            self._format = fmt
        self._writer.write(data, timestamp=float(header["time"]))
        if self._free is not None:
            self._free -= data.nbytes + TIMESTAMP_SIZE
        self.frames += 1
        self.total += 1
        self._frame_bytes = data.nbytes

    def _cut_back(self) -> None:
        """Cut the file back to its header and complete frames (after a failed write);
        a file that has no frame yet is removed."""
        from live_stack.io.ser import HEADER_SIZE

        if self.path is None:
            return
        try:
            if self.frames:
                os.truncate(self.path, HEADER_SIZE + self.frames * self._frame_bytes)
            else:
                self.path.unlink(missing_ok=True)
                self.path = None
        except OSError as exc:
            log.error("cannot cut %s back to its %d complete frames: %s", self.path,
                      self.frames, describe_os_error(exc))

    def _open(self, data: np.ndarray, layout: str, bits: int) -> None:
        from live_stack.io.ser import SerWriter

        self._files += 1
        self.path = numbered(self._directory, "raw", self._session, self._files, "ser")
        self.frames = 0
        self._writer = SerWriter(self.path, width=data.shape[1], height=data.shape[0],
                                 layout=layout, bit_depth=bits, instrument="live-stack daemon")
        log.info("recording raw frames (%dx%d %s, %d bits) into %s", data.shape[1],
                 data.shape[0], layout, bits, self.path)

    def close(self) -> None:
        """Close the current file (its timestamp trailer is written)."""
        writer, self._writer, self._format = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:  # keep shutting down, with a file of whole frames
                log.error("closing the raw recording %s failed: %s; keeping its %d complete "
                          "frames without timestamps", self.path, describe_os_error(exc),
                          self.frames)
                self._cut_back()

    def as_dict(self) -> dict[str, Any]:
        """Status of the recording."""
        return {"path": str(self.path) if self.path else None, "frames": self.frames,
                "total": self.total, "failed": self.failed, "stopped_time": self.stopped_time}
