"""``live-stack source folder DIR``: push the frames of files that appear in a folder.

New image files (PNG, TIFF, FITS, JPEG: one frame each) and new SER or video files (all
their frames) are sent to the daemon. The folder is watched with :mod:`watchdog`
(inotify on Linux); a file is read only once it has stopped changing for ``settle``
seconds, so a capture program still writing it is never read half-way.

No file is sent twice, also across restarts: a small JSON state file remembers each
file sent (its size, modification time and the number of frames sent). A SER or video
file that grows after it was sent has only its new frames sent; an image file that
changes after it was sent is ignored. Files present when the source starts are sent
too (in modification-time order) unless they are in the state file, or
``--skip-existing`` is given.

A file that cannot be read (empty, corrupt) or whose frames the daemon would refuse is
never fatal: it is skipped with a warning, counted (in the log and, through every later
frame's ``meta["skipped_files"]``, in the daemon's status) and remembered in the state
file with the reason, and read again when it changes. A crash-cut SER file is sent from
its complete frames, with a warning saying what its header claimed.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import check_endpoint
from daemon.sources import FramePusher, add_pusher_arguments, curve_from_args, run_source

log = logging.getLogger(__name__)

#: Image files sent as one frame each.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".fits", ".fit", ".fts", ".jpg", ".jpeg")

#: Files whose frames are all sent (SER and the video formats live_stack.io reads).
VIDEO_SUFFIXES = (".ser", ".avi", ".mp4", ".mov", ".mkv")

#: Version of the state file's layout.
STATE_VERSION = 1

#: While sending a long video, the state file is updated every this many frames.
STATE_EVERY = 100


@dataclass(frozen=True)
class FolderParams:
    """How to watch a folder."""

    directory: Path  # the folder to watch
    settle: float = 2.0  # seconds a file must stay unchanged before it is read
    recursive: bool = False  # also watch sub-folders
    state_file: Path | None = None  # where sent files are remembered (None: default_state_file)
    fps: float = 0.0  # pace of the frames of a video file (0: as fast as the daemon takes them)
    skip_existing: bool = False  # files present at start are marked sent without sending

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if self.state_file is not None:
            object.__setattr__(self, "state_file", Path(self.state_file))
        for name in ("settle", "fps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")

    @property
    def state_path(self) -> Path:
        return self.state_file or default_state_file(self.directory)


def default_state_file(directory: Path) -> Path:
    """Where the state of a watched folder is kept by default.

    In ``$STATE_DIRECTORY`` under systemd, else ``$XDG_STATE_HOME/live-stack`` (or
    ``~/.local/state/live-stack``), named after a hash of the folder's absolute path.
    """
    digest = hashlib.sha1(str(Path(directory).resolve()).encode()).hexdigest()[:12]
    name = f"folder-{digest}.json"
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / name
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "live-stack" / name


def frame_kind(path: Path) -> str | None:
    """``"image"``, ``"video"`` or None (not a frame file, or a hidden one)."""
    if path.name.startswith("."):
        return None
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


class FolderState:
    """The files of a folder already sent, kept in a JSON file (replaced atomically).

    Raises
    ------
    ValueError
        If an existing state file cannot be read: it is never silently replaced, since
        that would send every file again.
    """

    def __init__(self, path: Path, directory: Path) -> None:
        self.path = path
        self.files: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                files = data["files"]
                if data.get("version") != STATE_VERSION or not isinstance(files, dict):
                    raise ValueError(f"version {data.get('version')!r}")
                self.files = {str(k): dict(v) for k, v in files.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(
                    f"state file {path} cannot be read ({exc}); move it away to send every "
                    f"file of {directory} again"
                ) from None
        self._directory = str(directory)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.files.get(name)

    def mark(self, name: str, *, size: int, mtime_ns: int, frames: int) -> None:
        """Record ``frames`` frames of file ``name`` as sent, and save."""
        self.files[name] = {"size": size, "mtime_ns": mtime_ns, "frames": frames}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {"version": STATE_VERSION, "directory": self._directory, "files": self.files}
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into 'this file changed' calls."""

    def __init__(self, touch: Callable[[Path], None]) -> None:
        self._touch = touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        path = getattr(event, "dest_path", "") or event.src_path
        self._touch(Path(os.fsdecode(path)))


class FolderWatcher:
    """Watch a folder and call ``handle(path, stat)`` once per settled frame file.

    Parameters
    ----------
    params : FolderParams
        The folder and the settle time.
    handle : callable
        Called from :meth:`run`'s thread with a file that stopped changing and its
        ``os.stat_result``.
    stop : threading.Event
        :meth:`run` returns once this is set (call :meth:`wake` after setting it).
    """

    def __init__(self, params: FolderParams,
                 handle: Callable[[Path, os.stat_result], None],
                 stop: threading.Event) -> None:
        self.params = params
        self._handle = handle
        self._stop = stop
        self._cond = threading.Condition()
        self._pending: dict[Path, tuple[float, int, int]] = {}  # path -> (due, size, mtime)
        self._heap: list[tuple[float, Path]] = []
        self.ready = threading.Event()  # set once the folder is being watched

    def wake(self) -> None:
        """Make :meth:`run` look at the stop event now."""
        with self._cond:
            self._cond.notify_all()

    def touch(self, path: Path) -> None:
        """Note that ``path`` changed: it is looked at again ``settle`` s from now."""
        if frame_kind(path) is None or path == self.params.state_path:
            return
        try:
            st = path.stat()
        except OSError:
            return
        due = time.monotonic() + self.params.settle
        with self._cond:
            self._pending[path] = (due, st.st_size, st.st_mtime_ns)
            heapq.heappush(self._heap, (due, path))
            self._cond.notify()

    def existing(self) -> Iterator[Path]:
        """Frame files in the folder now, oldest first."""
        d = self.params.directory
        found = d.rglob("*") if self.params.recursive else d.iterdir()
        files = []
        for p in found:
            if frame_kind(p) is None:
                continue
            try:
                st = p.stat()
            except OSError:  # gone meanwhile
                continue
            if p.is_file():
                files.append((st.st_mtime_ns, p.name, p))
        return iter(p for _, _, p in sorted(files))

    def _next_due(self) -> list[tuple[Path, tuple[float, int, int]]]:
        """Wait for files whose settle time is over (or a stop); return them."""
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._heap and self._heap[0][1] not in self._pending:
                    heapq.heappop(self._heap)
                if self._heap and self._heap[0][0] <= now:
                    due = []
                    while self._heap and self._heap[0][0] <= now:
                        _, path = heapq.heappop(self._heap)
                        entry = self._pending.get(path)
                        if entry is not None and entry[0] <= now:
                            due.append((path, self._pending.pop(path)))
                    if due:
                        return due
                    continue
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)
            return []

    def run(self) -> None:
        """Watch until the stop event is set."""
        d = self.params.directory
        if not d.is_dir():
            raise ValueError(f"{d} is not a folder")
        observer = Observer()
        observer.schedule(_Handler(self.touch), str(d), recursive=self.params.recursive)
        observer.start()
        try:
            for path in self.existing():
                self.touch(path)
            self.ready.set()
            log.info("watching %s (files are read %g s after they stop changing)", d,
                     self.params.settle)
            while not self._stop.is_set():
                for path, (_, size, mtime) in self._next_due():
                    try:
                        st = path.stat()
                    except OSError:
                        continue  # gone
                    if (st.st_size, st.st_mtime_ns) != (size, mtime):
                        self.touch(path)  # still changing
                        continue
                    self._handle(path, st)
                    if self._stop.is_set():
                        break
        finally:
            observer.stop()
            observer.join()


class FolderSender:
    """Send the frames of settled files once, remembering them in a :class:`FolderState`.

    A file that cannot be read (empty, corrupt, in a format or with a compression that
    cannot be decoded) or whose frames the daemon would refuse (their size out of the
    protocol's range) is skipped with a warning, counted in :attr:`files_skipped` (sent
    to the daemon in every frame's ``meta["skipped_files"]``) and remembered with the
    reason in the state file; it is read again only if it changes.
    """

    def __init__(self, params: FolderParams, pusher: FramePusher, state: FolderState,
                 stop: threading.Event) -> None:
        self.params = params
        self._pusher = pusher
        self._state = state
        self._stop = stop
        self.frames_sent = 0
        self.files_sent = 0
        self.files_skipped = 0

    def name(self, path: Path) -> str:
        return path.relative_to(self.params.directory).as_posix()

    def skip(self, path: Path) -> None:
        """Mark a file as sent without sending it (``--skip-existing``)."""
        name = self.name(path)
        if self._state.get(name) is None:
            st = path.stat()
            frames = 1 if frame_kind(path) == "image" else _count_frames(path)
            self._state.mark(name, size=st.st_size, mtime_ns=st.st_mtime_ns, frames=frames)

    def handle(self, path: Path, st: os.stat_result) -> None:
        """Send what has not been sent yet of a settled file; never raises for the file."""
        name = self.name(path)
        entry = self._state.get(name)
        unchanged = entry is not None and (entry["size"], entry["mtime_ns"]) == (
            st.st_size, st.st_mtime_ns)
        if entry is not None and "skipped" in entry:
            if unchanged:
                log.info("%s is skipped: %s (it is read again when it changes)", name,
                         entry["skipped"])
                return
            entry = None if frame_kind(path) == "image" else entry  # changed: try again
        try:
            if frame_kind(path) == "image":
                if entry is not None:
                    if not unchanged:
                        log.info("%s changed after it was sent; not sending it again", name)
                    return
                self._send_image(path, name, st)
            else:
                start = 0 if entry is None else int(entry["frames"])
                self._send_video(path, name, st, start, unchanged=unchanged)
        except zmq.ZMQError:
            raise  # the connection to the daemon, not the file: the source stops (rc 1)
        except Exception as exc:  # any file may be broken: never fatal to the source
            self._skip(name, st, exc)

    def _skip(self, name: str, st: os.stat_result, exc: Exception) -> None:
        """Count and remember a file that could not be read or sent."""
        from live_stack.io import SourceError

        reason = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
        self.files_skipped += 1
        entry = self._state.get(name)
        frames = 0 if entry is None else int(entry["frames"])
        self._state.files[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "frames": frames, "skipped": reason}
        self._state.save()
        log.warning("skipped %s (%d files skipped so far): %s; it is read again when it "
                    "changes", name, self.files_skipped, reason)

    def _meta(self, name: str, **more: Any) -> dict[str, Any]:
        return {"file": name, "skipped_files": self.files_skipped, **more}

    def _send_image(self, path: Path, name: str, st: os.stat_result) -> None:
        from live_stack.io.images import bayer_pattern, read_native

        frame, meta = read_native(path)
        bayer = bayer_pattern(meta) if frame.ndim == 2 else None
        if self._pusher.send(frame, capture_time=st.st_mtime, bayer=bayer,
                             meta=self._meta(name)):
            self._state.mark(name, size=st.st_size, mtime_ns=st.st_mtime_ns, frames=1)
            self.frames_sent += 1
            self.files_sent += 1
            log.info("sent %s", name)

    def _send_video(self, path: Path, name: str, st: os.stat_result, start: int, *,
                    unchanged: bool) -> None:
        from live_stack.io import BAYER_PATTERNS, open_source, salvage_warning

        with open_source(path, salvage=True) as src:
            n = len(src)
            if n <= start:
                if not unchanged:
                    log.info("%s changed but has no new frames (%d sent)", name, start)
                return
            salvaged = salvage_warning(src)
            if salvaged is not None:
                log.warning("%s", salvaged)
            ts = src.timestamps()
            bayer = src.info.layout if src.info.layout in BAYER_PATTERNS else None
            log.info("sending frames %d..%d of %s", start, n - 1, name)
            begin = time.monotonic()
            sent = start
            try:
                for i in range(start, n):
                    if self.params.fps > 0:
                        delay = begin + (i - start) / self.params.fps - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            break
                    capture = float(ts[i]) if ts is not None else time.time()
                    meta = self._meta(name, frame=i, bit_depth=src.info.bit_depth)
                    if not self._pusher.send(src[i], capture_time=capture, bayer=bayer,
                                             meta=meta):
                        break
                    sent = i + 1
                    self.frames_sent += 1
                    if (sent - start) % STATE_EVERY == 0:
                        self._state.mark(name, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                         frames=sent)
            finally:
                self._state.mark(name, size=st.st_size, mtime_ns=st.st_mtime_ns, frames=sent)
                if sent > start:
                    log.info("sent %d frames of %s", sent - start, name)
        self.files_sent += 1


def _count_frames(path: Path) -> int:
    from live_stack.io import open_source

    try:
        with open_source(path, salvage=True) as src:
            return len(src)
    except ValueError:
        return 0


def watch_folder(params: FolderParams, pusher: FramePusher, stop: threading.Event,
                 *, watcher_ready: Callable[[FolderWatcher], None] | None = None) -> FolderSender:
    """Watch ``params.directory`` and send its frame files until ``stop`` is set.

    ``watcher_ready`` is called with the watcher before it starts (so that a caller can
    :meth:`~FolderWatcher.wake` it after setting ``stop``). Returns the sender (counts).
    """
    state = FolderState(params.state_path, params.directory)
    sender = FolderSender(params, pusher, state, stop)
    watcher = FolderWatcher(params, sender.handle, stop)
    if params.skip_existing and params.directory.is_dir():
        for path in watcher.existing():
            sender.skip(path)
    if watcher_ready is not None:
        watcher_ready(watcher)
    watcher.run()
    return sender


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="live-stack source folder",
        description="Send the frames of image, SER and video files appearing in a folder to "
        "a live-stack daemon, each file once.",
    )
    parser.add_argument("directory", type=Path, help="the folder to watch")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds a file must stay unchanged before it is read (default 2)")
    parser.add_argument("--recursive", action="store_true", help="also watch sub-folders")
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help="state file of the files sent (default: in $STATE_DIRECTORY or "
                        "~/.local/state/live-stack)")
    parser.add_argument("--fps", type=float, default=0.0,
                        help="pace of the frames of video files (default 0: no pacing)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="do not send the files already in the folder at start")
    add_pusher_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``live-stack source folder``."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        params = FolderParams(args.directory, settle=args.settle, recursive=args.recursive,
                              state_file=args.state, fps=args.fps,
                              skip_existing=args.skip_existing)
        curve = curve_from_args(args)
        check_endpoint(args.to, name="--to")
        if not params.directory.is_dir():
            raise ValueError(f"{params.directory} is not a folder")
    except ValueError as exc:
        print(f"live-stack source folder: error: {exc}", file=sys.stderr)
        return 2
    source_id = args.source_id or f"folder:{params.directory.resolve()}"
    watchers: list[FolderWatcher] = []

    def work(stop: threading.Event) -> int:
        with FramePusher(args.to, source=source_id, curve=curve, stop=stop) as pusher:
            sender = watch_folder(params, pusher, stop, watcher_ready=watchers.append)
        log.info("stopped: %d frames of %d files sent, %d files skipped", sender.frames_sent,
                 sender.files_sent, sender.files_skipped)
        return 0

    def wake() -> None:
        for w in watchers:
            w.wake()

    return run_source(work, name="folder", on_stop=wake)
