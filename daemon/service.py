"""The stacking service: ZeroMQ ingest, a bounded queue, the stacker, publishing, control.

:class:`StackingService` runs six threads around an injected stacker (normally
``live_stack.live.LiveStacker``; see :class:`Stacker` for what it must offer):

- **ingest** owns the PULL socket: it decodes every message with
  :func:`daemon.protocol.decode_image` (a malformed one is counted and logged, never
  fatal), records the raw frame when recording is on, and puts it in a
  :class:`~daemon.framequeue.DropOldestQueue` (the oldest waiting frame is dropped and
  counted as ``overflow`` when the queue is full);
- **stacker** takes frames from the queue, in batches of up to ``batch_size`` when they
  pile up, and calls ``stacker.add_batch`` (or ``add``); a frame of another size or
  dtype than the stack's is dropped as ``wrong_size``;
- **snapshot** takes a snapshot every ``publish_interval`` seconds when the stack
  changed, and encodes it as a ``stack`` message;
- **publisher** owns the XPUB socket: it sends each new stack, a ``status`` message
  every ``status_interval`` seconds (never waiting for the stacker), and the latest
  stack again at once whenever a subscriber to ``stack`` arrives;
- **control** owns the control socket (a ROUTER: REQ clients get one answer per
  request) and answers control requests; camera requests it relays to the source that
  owns the camera (:mod:`daemon.camera`);
- **saver** writes the stack into a new file of the stack history every
  ``save_interval`` seconds when it changed (see :mod:`daemon.persist`).

Each socket is used by its own thread only; the stacker is guarded by one
:class:`~daemon.fairlock.FairLock`, so that the snapshot, control and saver threads get
their turn between two batches however busy the stacker is.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import zmq

from daemon import protocol
from daemon.camera import CameraRelay, split_envelope
from daemon.config import DaemonConfig, Endpoints, check_live_value
from daemon.diagnosis import Diagnosis, diagnose
from daemon.fairlock import FairLock
from daemon.framequeue import DropOldestQueue, QueueClosed
from daemon.history import history
from daemon.history import load as load_stack
from daemon.persist import (
    MIB,
    NO_ROOM,
    RawRecorder,
    SaveError,
    append_index,
    attach_session_log,
    check_writable,
    describe_os_error,
    detach_session_log,
    free_bytes,
    index_file,
    index_record,
    new_session,
    numbered,
    save_stack,
    stack_file,
)
from daemon.preview import PreviewParams, encode_preview
from daemon.security import (
    AuthorizedKeys,
    configure_server,
    load_key_pair,
    start_authenticator,
)
from daemon.stats import IngestStats

log = logging.getLogger(__name__)

#: (frame, AP) pairs the stacker catches up on per call while no frame waits: a few
#: milliseconds, so that a frame arriving meanwhile waits no longer than that.
CATCH_UP_PAIRS = 32
#: Send high-water mark of the publisher (messages queued per slow subscriber).
PUBLISH_HWM = 8

#: Most messages the ingest thread takes in one go before looking at the stop flag.
INGEST_BATCH = 256

#: Seconds after a stop begins by which the socket threads are to have finished (they
#: notice the stop within poll_timeout).
SOCKET_JOIN = 0.5

#: Seconds after a stop begins by which the threads that may be inside the stacker
#: (stacking, snapshot, periodic save) are waited for at most.
WORK_JOIN = 0.8

#: Seconds after a stop begins until which the final save may wait for a busy stacker;
#: then the latest snapshot taken is saved. Writing the file comes on top: the stop
#: takes well under 2 s.
SAVE_WAIT = 1.2

#: Number of recent snapshot durations whose median sets the pace of slow snapshots.
SNAPSHOT_HISTORY = 5

#: At stop, a fresh snapshot is taken only if the last one took less than this many
#: seconds; else the latest snapshot taken is saved (it may miss the last few frames).
STOP_SNAPSHOT_SECONDS = 0.8

#: Seconds between two log lines about the same kind of dropped frame.
LOG_THROTTLE = 5.0

#: Seconds the publisher waits for its old listener to close when it binds again (after
#: a client key was removed).
REBIND_WAIT = 1.0

#: Why a stack is saved (the ``reason`` of its stack index record).
SAVE_REASONS = ("request", "periodic", "reset", "stop")

#: Source name the daemon puts in the headers of the stacks it publishes.
DAEMON_SOURCE = "live-stack-daemon"


class StackerResult(Protocol):
    """What a stacker's ``add`` says about one frame (``live_stack.live.AddResult``)."""

    @property
    def admitted(self) -> bool: ...  # the frame is in the stack's buffer

    @property
    def reason(self) -> str | None: ...  # why not ("quality", "alignment", "warmup")

    @property
    def quality(self) -> float: ...  # the frame's global quality


class StackerSnapshot(Protocol):
    """A stacker's blended stack (``live_stack.live.Snapshot``)."""

    @property
    def image(self) -> np.ndarray: ...  # float32 [0, 1], (H, W) or (H, W, 3)

    @property
    def stats(self) -> dict[str, Any]: ...  # msgpack-able statistics

    @property
    def ap_centres(self) -> np.ndarray: ...  # (m, 2) AP centres (y, x) in image pixels

    @property
    def ap_size(self) -> int: ...  # AP box side in image pixels


@runtime_checkable
class Stacker(Protocol):
    """What the service calls on a stacker (``live_stack.live.LiveStacker``); see
    docs/contracts.md. Every method is called under the service's stacker lock, except
    ``params``, which the status reads without it."""

    @property
    def params(self) -> Any: ...  # a frozen dataclass of the live parameters

    def add(self, frame: np.ndarray, timestamp: float | None = None) -> StackerResult: ...

    def add_batch(self, frames: Sequence[np.ndarray],
                  timestamps: Sequence[float] | None = None) -> Sequence[StackerResult]: ...

    def catch_up(self, budget: int) -> bool: ...  # deferred work while idle; more left?

    def snapshot(self) -> StackerSnapshot | None: ...

    def reset(self) -> None: ...

    # several at once, all or none; ValueError naming the bad one
    def set_params(self, values: Mapping[str, Any]) -> Any: ...

    def close(self) -> None: ...  # end the stacker's worker threads


#: The members of :class:`Stacker`, for the error that names the missing ones.
_STACKER_MEMBERS = tuple(name for name in vars(Stacker) if not name.startswith("_"))


class FramePreparation:
    """Calibrate (dark, flat) and debayer a received frame, as ``[frames]`` says.

    The masters are read once, here; a file that can't be read is an error at start-up.
    Frames whose layout is a Bayer pattern come out RGB; others pass through.
    """

    def __init__(self, params: Any) -> None:
        from live_stack.calibrate import CalibParams, load_calibration
        from live_stack.colour import ColourParams, debayer_frame

        self.calibration = load_calibration(CalibParams(dark=params.dark, flat=params.flat))
        self.colour = ColourParams(debayer=params.debayer)
        self._debayer = debayer_frame

    def __call__(self, frame: np.ndarray, layout: str) -> np.ndarray:
        if self.calibration is not None:
            frame = self.calibration.apply(frame)
        return self._debayer(frame, layout, self.colour)


@dataclass
class _Frame:
    """A received frame waiting for the stacker."""

    header: dict[str, Any]  # the checked wire header
    array: np.ndarray  # read-only pixels (a view on the received message)


@dataclass(frozen=True)
class _Taken:
    """A snapshot and the state it was taken in."""

    version: int  # the service's stack version when taken
    segment: int  # the stack number
    params: Any  # the stacker's parameters when taken (a new object after each set)
    snap: StackerSnapshot  # the stacker's snapshot
    counters: dict[str, Any]  # IngestStats.as_dict() at that moment
    seconds: float  # how long snapshot() took


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, tuples and dataclasses made msgpack-able."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    return str(obj)


def param_value(params: Any, name: str, default: Any) -> Any:
    """Value of parameter ``name`` in ``params``: a field, or ``PREFIX_FIELD`` of a phase."""
    if hasattr(params, name):
        return getattr(params, name)
    if dataclasses.is_dataclass(params):
        for f in dataclasses.fields(params):
            sub = getattr(params, f.name)
            rest = name[len(f.name) + 1:]
            if name.startswith(f.name + "_") and dataclasses.is_dataclass(sub) and rest:
                if hasattr(sub, rest):
                    return getattr(sub, rest)
    return default


class _Throttle:
    """Log a repeated warning at most once per :data:`LOG_THROTTLE` seconds per key."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -LOG_THROTTLE) < LOG_THROTTLE:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            n = self._suppressed.pop(key, 0)
        log.warning(msg + (f" ({n} more like it not logged)" if n else ""), *args)


class ServiceError(RuntimeError):
    """The service could not start (a socket could not be bound, keys missing...)."""


class StackingService:
    """The live stacking daemon, around an injected stacker.

    Parameters
    ----------
    config : DaemonConfig
        Endpoints, queueing, output and security settings.
    stacker : Stacker
        The live stacker; the service calls it from its threads under one lock.
    context : zmq.Context, optional
        ZeroMQ context to use (one is made, and terminated at stop, if not given).
    on_stop_request : callable, optional
        Called (from the control thread) when a ``shutdown`` request arrives, e.g. to
        wake the main thread; :attr:`stop_requested` is set in any case.

    Use :meth:`start` and :meth:`stop` (or the object as a context manager).
    """

    def __init__(
        self,
        config: DaemonConfig,
        stacker: Stacker,
        *,
        context: zmq.Context | None = None,
        on_stop_request: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        if not isinstance(stacker, Stacker):
            missing = [name for name in _STACKER_MEMBERS if not hasattr(stacker, name)]
            raise TypeError(f"the stacker ({type(stacker).__name__}) lacks what the service "
                            f"calls: {', '.join(missing)} (see daemon.service.Stacker)")
        self._stacker = stacker
        self._prepare = FramePreparation(config.frames)
        self._own_ctx = context is None
        self._ctx = zmq.Context() if context is None else context
        self._on_stop_request = on_stop_request
        svc = config.service
        self.stop_requested = threading.Event()  # set by a shutdown request or stop()
        self._stop = threading.Event()  # tells the threads to finish
        self._stacker_lock = FairLock()  # guards the stacker and the state below
        self._save_lock = threading.Lock()
        self._stats = IngestStats(recent=svc.recent_frames, rate_window=svc.rate_window)
        self._queue: DropOldestQueue[_Frame] = DropOldestQueue(
            svc.queue_size, max_bytes=int(svc.queue_mib * (1 << 20)))
        self._throttle = _Throttle()
        self._threads: list[threading.Thread] = []
        self._auth: Any = None
        self._keys: AuthorizedKeys | None = None  # with CURVE on: the authorised clients
        self._server_keys: tuple[bytes, bytes] | None = None  # with CURVE on: its key pair
        self._log_handler: logging.Handler | None = None
        self._recorder: RawRecorder | None = None
        self._started = False
        self._stopped = False
        self._start_time = time.monotonic()
        # state guarded by _stacker_lock
        self._paused = False
        self._stack_format: tuple[tuple[int, ...], np.dtype] | None = None  # shape, dtype
        self._version = 0  # bumped by each admitted frame and each reset
        self._segment = 1  # stack number within the session (bumped by reset)
        self._resets = 0
        self._snap_stats: dict[str, Any] = {}  # stats of the latest snapshot taken
        self._taken: _Taken | None = None  # the latest snapshot taken
        self._snapshot_seconds = 0.0  # how long the latest snapshot() call took
        self._snapshot_durations: deque[float] = deque(maxlen=SNAPSHOT_HISTORY)
        # publisher-owned state
        self._published_version = -1
        self._latest_stack: list[Any] | None = None
        self._slot_lock = threading.Lock()
        self._pending_stack: tuple[list[Any], dict[str, Any]] | None = None  # for publisher
        self._stack_seq = 0
        self._stack_info: dict[str, Any] = {}
        self._rates = {"received_fps": 0.0, "processed_fps": 0.0}
        self._diagnosis_lock = threading.Lock()
        self._diagnosis: Diagnosis | None = None  # the latest one logged
        self._camera = CameraRelay()  # sources that own a camera (control thread's)
        self._preview = PreviewParams()
        # the newest frame received (set by ingest, read by the publisher's previews)
        self._newest_frame: tuple[dict[str, Any], np.ndarray] | None = None
        # saver state, guarded by _save_lock
        self._saved_state: tuple[int, Any] | None = None  # (version, params) last saved
        self._saves = 0  # stack files written in the session
        self._last_save: dict[str, Any] = {"path": None, "time": None}
        self._save_error: dict[str, Any] | None = None  # the last failed save, until one works
        self._low_space = False  # the output disk is under output.warn_free_mib
        #: why the stack could not be saved at stop (None: saved, or nothing to save)
        self.final_save_error: SaveError | None = None
        #: the endpoints actually bound (ports resolved), set by start()
        self.endpoints: Endpoints | None = None
        self.output_dir = Path(config.output.directory)
        self.session = ""
        self._index = self.output_dir / "stacks.jsonl"  # the session's, set by start()

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> StackingService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Create the output folder, bind the sockets and start the threads.

        Raises
        ------
        ServiceError
            If an endpoint cannot be bound or the CURVE keys cannot be used; nothing is
            left running.
        """
        if self._started:
            raise ServiceError("the service was already started")
        self._started = True
        out = self.config.output
        try:
            self.session = new_session(self.output_dir)
            self._index = index_file(self.output_dir, self.session)
            check_writable(self.output_dir)
        except OSError as exc:
            self._stopped = True
            self._teardown()
            raise ServiceError(f"output.directory {self.output_dir}: cannot write there: "
                               f"{describe_os_error(exc)}") from None
        sockets: list[zmq.Socket] = []
        try:
            keys = self._server_keys = self._curve_keys()
            if keys is not None:
                self._keys = AuthorizedKeys(self.config.curve.authorized_clients)
                self._auth = start_authenticator(self._ctx, self._keys)
            pull = self._bind(zmq.PULL, "ingest", keys, sockets)
            pub = self._bind(zmq.XPUB, "publish", keys, sockets)
            rep = self._bind(zmq.ROUTER, "control", keys, sockets)
            if out.session_log:  # only now: a failed start leaves no file behind
                level = getattr(logging, self.config.service.log_level.upper())
                path = numbered(self.output_dir, "session", self.session, 1, "log")
                try:
                    self._log_handler = attach_session_log(path, level=level)
                except OSError as exc:
                    raise ServiceError(f"output.directory {self.output_dir}: cannot write "
                                       f"the session log: {describe_os_error(exc)}") from None
        except (ValueError, zmq.ZMQError, ServiceError) as exc:
            for s in sockets:
                s.close(linger=0)
            self._stopped = True
            self._teardown()
            raise ServiceError(str(exc)) from None
        self.endpoints = Endpoints(*(s.getsockopt_string(zmq.LAST_ENDPOINT) for s in sockets))
        if out.record:
            self._recorder = RawRecorder(self.output_dir, self.session,
                                         min_free=int(out.min_free_mib * MIB))
        self._check_free_space(starting=True)
        self._start_time = time.monotonic()
        self._spawn("ingest", self._ingest_loop, pull)
        self._spawn("stacker", self._process_loop)
        wake_in = self._ctx.socket(zmq.PAIR)
        wake_out = self._ctx.socket(zmq.PAIR)
        wake_in.linger = wake_out.linger = 0
        endpoint = f"inproc://live-stack-stacks-{id(self):x}"
        wake_in.bind(endpoint)
        wake_out.connect(endpoint)
        self._spawn("snapshot", self._snapshot_loop, wake_out)
        self._spawn("publisher", self._publish_loop, pub, wake_in)
        self._spawn("control", self._control_loop, rep)
        if out.save_interval > 0:
            self._spawn("saver", self._save_loop)
        log.info(
            "daemon session %s: ingest %s, publish %s, control %s, output %s%s",
            self.session, self.endpoints.ingest, self.endpoints.publish,
            self.endpoints.control, self.output_dir, " (CURVE on)" if keys else "",
        )

    def _curve_keys(self) -> tuple[bytes, bytes] | None:
        if not self.config.curve.enabled:
            return None
        return load_key_pair(self.config.curve.server_secret_key, what="curve.server_secret_key")

    def _bind(self, kind: int, name: str, keys: tuple[bytes, bytes] | None,
              sockets: list[zmq.Socket]) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sockets.append(sock)
        sock.linger = 0
        if kind == zmq.PULL:
            sock.rcvhwm = self.config.service.ingest_hwm
        elif kind == zmq.XPUB:
            sock.sndhwm = PUBLISH_HWM
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if keys is not None:
            configure_server(sock, *keys)
        endpoint = getattr(self.config.endpoints, name)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ServiceError(f"cannot bind endpoints.{name} {endpoint}: "
                               f"{zmq.strerror(exc.errno)}") from None
        return sock

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=self._guard, args=(name, target, *args), name=name,
                             daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, name: str, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except zmq.ContextTerminated:  # the owner of the context closed it: we are done
            pass
        except Exception:  # a bug: log it and stop the service rather than limp on
            log.exception("the %s thread failed; stopping the daemon", name)
            self.request_stop()

    def healthy(self) -> bool:
        """True while every thread is running."""
        return self._started and not self._stopped and all(t.is_alive() for t in self._threads)

    def request_stop(self) -> None:
        """Ask for a stop (what a ``shutdown`` request does); :meth:`stop` does it."""
        self.stop_requested.set()
        if self._on_stop_request is not None:
            self._on_stop_request()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a stop is requested; True if it was."""
        return self.stop_requested.wait(timeout)

    def stop(self) -> Path | None:
        """Stop the threads, save the stack, close everything; return the file saved.

        Takes well under 2 s: each socket loop notices the stop within
        ``poll_timeout``; frames still waiting in the queue are dropped (counted as
        ``shutdown``; they are in the raw recording if it is on).
        """
        if not self._started or self._stopped:
            return None
        t0 = time.monotonic()
        self._stopped = True
        self.stop_requested.set()
        self._stop.set()
        by_name = {t.name: t for t in self._threads}

        def join(names: tuple[str, ...], until: float) -> None:
            for name in names:
                if name in by_name:
                    by_name[name].join(max(0.0, t0 + until - time.monotonic()))

        join(("ingest", "control", "publisher"), SOCKET_JOIN)
        self._stats.on_drop("shutdown", self._queue.close())
        join(("stacker", "snapshot", "saver"), WORK_JOIN)
        busy = [t.name for t in self._threads if t.is_alive()]
        path = None
        try:
            wait = max(0.0, t0 + SAVE_WAIT - time.monotonic()) if busy else None
            path = self.save(timeout=wait, max_snapshot_seconds=STOP_SNAPSHOT_SECONDS,
                             reason="stop")
        except SaveError as exc:
            self.final_save_error = exc
            last = self._last_save["path"]
            log.error("the final stack could not be saved%s: %s; the last stack saved is %s",
                      " (the disk is full)" if exc.no_room else "", exc,
                      last or "none")
        except Exception:  # a bug: still stop
            log.exception("saving the stack at shutdown failed")
        if self._recorder is not None:
            self._recorder.close()
        stuck = [t.name for t in self._threads if t.is_alive()]
        if "stacker" not in stuck and "snapshot" not in stuck:
            self._stacker.close()  # the stacker's worker threads
        if stuck:
            log.warning("thread(s) %s still busy in the stacker at stop", ", ".join(stuck))
        s = self._stats.as_dict()
        why = self._diagnose(s)
        log.info("daemon stopped: %d frames received, %d processed, drops %s; stack %s%s",
                 s["frames"]["received"], s["frames"]["processed"],
                 {k: v for k, v in s["drops"].items() if v}, path,
                 f" ({why.text})" if why is not None and why.fault else "")
        self._teardown(later=bool(stuck))
        return path

    def _teardown(self, *, later: bool = False) -> None:
        """Stop the authenticator and terminate an own context (in the background if
        threads still busy in the stacker have a socket open: it ends when they do)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and later:
            threading.Thread(target=self._ctx.term, name="context-term", daemon=True).start()
        elif self._own_ctx:
            self._ctx.term()
        if self._log_handler is not None:
            detach_session_log(self._log_handler)
            self._log_handler = None

    # -- ingest --------------------------------------------------------------------------

    def _readable(self, sock: zmq.Socket) -> Iterator[None]:
        """Yield each time ``sock`` has a message waiting, until the service stops; the
        socket is closed at the end (waits of ``poll_timeout``, so that a stop is seen)."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        timeout_ms = self.config.service.poll_timeout * 1000
        try:
            while not self._stop.is_set():
                if poller.poll(timeout_ms):
                    yield
        finally:
            sock.close(linger=0)

    def _ingest_loop(self, sock: zmq.Socket) -> None:
        with closing(self._readable(sock)) as ready:
            for _ in ready:
                for _ in range(INGEST_BATCH):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(parts)

    def _authorised(self, frames: list[zmq.Frame]) -> bool:
        """With CURVE on: whether the key that sent ``frames`` is still authorised (a
        connection made before its key was removed from the folder is refused from then
        on)."""
        if self._keys is None or not frames:
            return True
        try:
            user_id = frames[0].get("User-Id")
        except zmq.ZMQError:  # no such property: not a CURVE connection
            user_id = None
        return self._keys.allows_user_id(user_id)

    def _on_message(self, parts: list[Any]) -> None:
        """Decode one ingest message and queue it; every failure is a counted drop."""
        if not self._authorised(parts):
            self._stats.on_drop("unauthorised")
            return
        try:
            header, array = protocol.decode_image(parts)
            if header["kind"] != "frame":
                raise protocol.ProtocolError(f"kind must be 'frame', got {header['kind']!r}")
        except protocol.ProtocolError as exc:
            self._stats.on_drop("malformed")
            self._throttle.warning("malformed", "malformed message dropped: %s", exc)
            return
        if not isinstance(header.get("source"), str):
            header["source"] = str(header.get("source", ""))
        self._stats.on_received(header)
        self._newest_frame = (header, array)  # a reference only: previews cost ingest nothing
        if self._recorder is not None:
            self._recorder.write(header, array)
        try:
            dropped = self._queue.put(_Frame(header, array), array.nbytes)
        except QueueClosed:
            self._stats.on_drop("shutdown")
            return
        if dropped:
            self._stats.on_drop("overflow", len(dropped))
            self._throttle.warning(
                "overflow", "frames arrive faster than they are stacked: oldest dropped"
            )

    # -- processing ----------------------------------------------------------------------

    def _process_loop(self) -> None:
        batch_size = self.config.service.batch_size
        behind = False  # the stacker has selection changes to catch up on
        while True:
            try:
                # while no frame waits, the stacker catches up (quicker snapshots later)
                first = self._queue.get(timeout=0 if behind else None)
                if first is None:
                    behind = self._catch_up()
                    continue
                behind = True
                batch = [first]
                while len(batch) < batch_size:
                    more = self._queue.get(timeout=0)
                    if more is None:
                        break
                    batch.append(more)
            except QueueClosed:
                return
            self._process(batch)

    def _catch_up(self) -> bool:
        """Let the stacker do a little of its deferred work; whether more remains."""
        with self._stacker_lock:
            if self._paused:
                return False
            try:
                return bool(self._stacker.catch_up(CATCH_UP_PAIRS))
            except Exception:
                log.exception("the stacker failed to catch up")
                return False

    def _process(self, batch: list[_Frame]) -> None:
        """Give a batch of frames to the stacker (one call when it has ``add_batch``)."""
        with self._stacker_lock:
            if self._paused:
                self._stats.on_drop("paused", len(batch))
                return
            fmt = self._stack_format
            good = []
            for item in batch:
                try:
                    item.array = self._prepare(item.array, item.header["layout"])
                except ValueError as exc:
                    self._stats.on_drop("malformed")
                    self._throttle.warning("prepare", "frame from %r dropped: %s",
                                           item.header["source"], exc)
                    continue
                if fmt is None:
                    fmt = (item.array.shape, item.array.dtype)
                if (item.array.shape, item.array.dtype) != fmt:
                    self._stats.on_drop("wrong_size")
                    self._throttle.warning(
                        "wrong_size", "frame %s %s from %r dropped: the stack is %s %s",
                        item.array.shape, item.array.dtype, item.header["source"], *fmt,
                    )
                else:
                    good.append(item)
            if not good:
                return
            results = self._add(good)
            for item, result in zip(good, results, strict=True):
                if result is None:
                    continue
                self._stack_format = fmt
                admitted = bool(result.admitted)
                self._stats.on_processed(item.header, admitted=admitted, reason=result.reason,
                                         quality=float(result.quality))
                if admitted:
                    self._version += 1

    def _add(self, items: list[_Frame]) -> list[StackerResult | None]:
        """Call the stacker; a frame it refuses is a counted drop (result None)."""
        if len(items) > 1:
            try:
                return list(self._stacker.add_batch([i.array for i in items],
                                      [float(i.header["time"]) for i in items]))
            except ValueError:
                pass  # one of them is refused (none was taken): find which, one by one
            except Exception:
                log.exception("the stacker's add_batch failed; adding the frames one by one")
        results: list[StackerResult | None] = []
        for item in items:
            try:
                t = float(item.header["time"])
                results.append(self._stacker.add(item.array, timestamp=t))
            except ValueError as exc:
                self._stats.on_drop("wrong_size")
                self._throttle.warning("wrong_size", "frame refused by the stacker: %s", exc)
                results.append(None)
            except Exception:
                self._stats.on_drop("error")
                log.exception("the stacker failed on frame %s from %r", item.header["seq"],
                              item.header["source"])
                results.append(None)
        return results

    # -- publishing ----------------------------------------------------------------------

    def _snapshot_loop(self, wake: zmq.Socket) -> None:
        """Every ``publish_interval`` s, if the stack changed, hand a new stack message to
        the publisher (waiting for the stacker's turn, so that stacks keep coming under
        load; the publisher's status messages never wait for the stacker)."""
        svc = self.config.service
        next_due = time.monotonic()
        try:
            while not self._stop.wait(max(0.0, next_due - time.monotonic())):
                # slow snapshots are taken less often, to leave the stacker its share
                typical = statistics.median(self._snapshot_durations or [0.0])
                interval = max(svc.publish_interval, typical / svc.max_snapshot_share)
                next_due = time.monotonic() + interval
                if self._version == self._published_version:
                    continue
                stack = self._take_stack()
                if stack is not None and not self._stop.is_set():
                    with self._slot_lock:
                        self._pending_stack = stack
                    wake.send(b"")
        finally:
            wake.close(linger=0)

    def _snapshot(self, timeout: float | None = None, *, fresh: bool = False) -> _Taken | None:
        """A snapshot of the current stack: the latest one taken if the stack has not
        changed since (and not ``fresh``), else a new one (waiting at most ``timeout`` s
        for the stacker; None if it stayed busy or has no stack yet)."""
        taken = self._taken
        if taken is not None and taken.version == self._version and not fresh:
            return taken
        if not self._stacker_lock.acquire(timeout=timeout):
            return None
        try:
            version, segment = self._version, self._segment
            params = self._stacker.params
            t0 = time.perf_counter()
            snap = self._stacker.snapshot()
            seconds = time.perf_counter() - t0
            counters = self._stats.as_dict()
        finally:
            self._stacker_lock.release()
        self._snapshot_seconds = seconds
        self._snapshot_durations.append(seconds)
        if snap is None:
            return None
        self._snap_stats = plain(snap.stats)
        taken = _Taken(version, segment, params, snap, counters, seconds)
        self._taken = taken
        return taken

    def _take_stack(self) -> tuple[list[Any], dict[str, Any]] | None:
        """Snapshot the stacker; return the ``stack`` message parts and their summary."""
        version = self._version
        taken = self._snapshot()
        self._published_version = taken.version if taken is not None else version
        if taken is None:
            return None
        snap, segment = taken.snap, taken.segment
        newest, frames = taken.counters["newest"], taken.counters["frames"]
        self._stack_seq += 1
        pixels = protocol.stack_to_wire(snap.image)
        meta = {
            "stats": self._snap_stats,
            "ap_centres": plain(np.asarray(snap.ap_centres).reshape(-1, 2)),
            "ap_size": int(snap.ap_size),
            "newest": newest,
            "frames_processed": frames["processed"],
            "session": self.session,
            "segment": segment,
        }
        parts = protocol.encode_image(pixels, kind="stack", seq=self._stack_seq,
                                      capture_time=time.time(), source=DAEMON_SOURCE,
                                      meta=meta)
        info = {"seq": self._stack_seq, "width": pixels.shape[1], "height": pixels.shape[0],
                "newest_index": newest["index"], "newest_time": newest["time"],
                "segment": segment}
        return [protocol.TOPIC_STACK, *parts], info

    def _publish_loop(self, sock: zmq.Socket, wake: zmq.Socket) -> None:
        svc = self.config.service
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        next_status = next_preview = time.monotonic()
        previewed: dict[str, Any] | None = None  # header of the frame last previewed
        removals = self._keys.removals if self._keys is not None else 0
        try:
            while not self._stop.is_set():
                if self._keys is not None and self._keys.refresh() != removals:
                    removals = self._keys.removals
                    poller.unregister(sock)
                    sock = self._rebind_publisher(sock)
                    poller.register(sock, zmq.POLLIN)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + svc.status_interval
                    self._rates = self._stats.sample_rates()
                    sock.send_multipart([protocol.TOPIC_STATUS, protocol.pack(self.status())])
                newest = self._newest_frame
                if time.monotonic() >= next_preview and newest is not None \
                        and newest[0] is not previewed:
                    next_preview = time.monotonic() + self._preview.interval
                    previewed = newest[0]
                    self._send_preview(sock, *newest)
                wait = min(max(min(next_status, next_preview) - time.monotonic(), 0.0),
                           svc.poll_timeout)
                events = dict(poller.poll(wait * 1000))
                if wake in events:
                    self._send_new_stack(sock, wake)
                if sock in events and self._new_stack_subscriber(sock):
                    latest = self._latest_stack
                    if latest is not None:
                        sock.send_multipart(latest, copy=False)
        finally:
            sock.close(linger=0)
            wake.close(linger=0)

    def _rebind_publisher(self, old: zmq.Socket) -> zmq.Socket:
        """A new publisher socket on the same endpoint, the old one closed: every
        subscriber reconnects and makes a new handshake, which a client whose key was
        removed from ``curve.authorized_clients`` no longer passes (a publisher cannot
        drop one subscriber). The old listener is unbound first and the new socket bound
        once the monitor says it is closed; subscribers miss at most a status."""
        assert self.endpoints is not None and self._server_keys is not None
        endpoint = self.endpoints.publish
        monitor = old.get_monitor_socket(zmq.EVENT_CLOSED)
        try:
            old.unbind(endpoint)
            if not monitor.poll(REBIND_WAIT * 1000):
                log.warning("the publisher's old listener did not close within %g s",
                            REBIND_WAIT)
        finally:
            old.disable_monitor()
            monitor.close(linger=0)
        sock = self._ctx.socket(zmq.XPUB)
        sock.linger = 0
        sock.sndhwm = PUBLISH_HWM
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        configure_server(sock, *self._server_keys)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:  # keep the old one (and its subscribers) then
            sock.close(linger=0)
            try:
                old.bind(endpoint)
            except zmq.ZMQError:
                pass  # logged below: the publisher now has no listener
            log.error("cannot bind the publisher again on %s to drop removed clients: %s",
                      endpoint, zmq.strerror(exc.errno))
            return old
        old.close(linger=0)
        log.info("publisher bound again on %s: subscribers reconnect, a removed key cannot",
                 endpoint)
        return sock

    def _send_preview(self, sock: zmq.Socket, header: dict[str, Any],
                      frame: np.ndarray) -> None:
        """Publish a decimated preview of the newest frame (see daemon/preview.py)."""
        focus = {**self._stats.focus(), "received_fps": self._rates["received_fps"]}
        try:
            parts = encode_preview(header, frame, self._preview, focus=focus)
        except ValueError as exc:  # a frame the wire took but a preview cannot show
            self._throttle.warning("preview", "no preview of frame %s: %s", header["seq"], exc)
            return
        sock.send_multipart(parts, copy=False)

    def _send_new_stack(self, sock: zmq.Socket, wake: zmq.Socket) -> None:
        """Publish the stack the snapshot thread left (if any)."""
        while True:
            try:
                wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._slot_lock:
            stack, self._pending_stack = self._pending_stack, None
        if stack is None:
            return
        parts, info = stack
        now = time.time()
        newest_time = info.pop("newest_time")
        info.update(time=now, latency_s=None if newest_time is None else now - newest_time)
        self._latest_stack = parts
        self._stack_info = info
        sock.send_multipart(parts, copy=False)

    def _new_stack_subscriber(self, sock: zmq.Socket) -> bool:
        """Read subscription messages; True if one subscribes to ``stack`` messages."""
        found = False
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return found
            if msg[:1] == b"\x01" and protocol.TOPIC_STACK.startswith(msg[1:]):
                found = True

    # -- control -------------------------------------------------------------------------

    def _control_loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        timeout = self.config.service.poll_timeout
        try:
            while not self._stop.is_set():
                due = self._camera.next_deadline()
                wait = timeout if due is None else min(timeout, max(0.0, due - time.monotonic()))
                if poller.poll(wait * 1000):
                    frames = sock.recv_multipart(copy=False)
                    message = [f.bytes for f in frames]
                    if self._authorised(frames[-1:]):
                        self._on_control(sock, message)
                    else:
                        self._refuse_control(sock, message)
                for envelope, reply in self._camera.expired():
                    sock.send_multipart([*envelope, b"", reply])
        finally:
            sock.close(linger=0)

    def _refuse_control(self, sock: zmq.Socket, message: list[bytes]) -> None:
        """Answer a request on a connection whose CURVE key was removed since."""
        split = split_envelope(message)
        if split is not None:
            sock.send_multipart([*split[0], b"", protocol.encode_error(
                "not authorised: this client's key was removed from the daemon's "
                "curve.authorized_clients")])

    def _on_control(self, sock: zmq.Socket, message: list[bytes]) -> None:
        """One message on the control ROUTER: a request to answer, or camera traffic."""
        split = split_envelope(message)
        if split is None:  # not from a REQ or REQ-like DEALER: nowhere to answer
            self._throttle.warning("envelope", "control message without an envelope dropped")
            return
        envelope, parts = split
        request = None
        if len(parts) == 1:
            try:
                request = protocol.check_request(protocol.unpack(parts[0], what="request"))
            except protocol.ProtocolError:
                request = None  # handle_request says what is wrong
        cmd = request["cmd"] if request is not None else None
        if cmd == "camera_hello":
            self._camera.hello(envelope, request)
        elif cmd == "camera_result":
            answer = self._camera.result(request)
            if answer is not None:
                sock.send_multipart([*answer[0], b"", answer[1]])
        elif cmd == "camera":
            out = self._camera.forward(envelope, request)
            if isinstance(out, bytes):
                sock.send_multipart([*envelope, b"", out])
            else:
                log.info("control: camera %s -> the source", request["settings"])
                sock.send_multipart([*out[0], b"", out[1]])
        else:
            reply, stop = self.handle_request(parts)
            sock.send_multipart([*envelope, b"", reply])
            if stop:
                self.request_stop()

    def handle_request(self, parts: list[bytes]) -> tuple[bytes, bool]:
        """Answer one control request; return the encoded reply and whether to stop.

        Never raises: a malformed request or a failing command gets an error reply.
        """
        if len(parts) != 1:
            return protocol.encode_error(
                f"a request is one message part (a msgpack map), got {len(parts)} parts"
            ), False
        try:
            request = protocol.check_request(protocol.unpack(parts[0], what="request"))
        except protocol.ProtocolError as exc:
            log.warning("bad control request: %s", exc)
            return protocol.encode_error(str(exc)), False
        cmd = request["cmd"]
        try:
            result = self._command(request)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            return protocol.encode_error(f"{cmd}: {msg}"), False
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            return protocol.encode_error(f"{cmd} failed: {type(exc).__name__}: {exc}"), False
        if cmd not in ("status", "history", "load"):  # (those answer with much data)
            log.info("control: %s -> %s", request, result)
        return protocol.encode_reply(plain(result)), cmd == "shutdown"

    def _command(self, request: dict[str, Any]) -> Any:
        cmd = request["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "reset":
            return self.reset()
        if cmd == "set":
            return self.set_param(request["name"], request["value"])
        if cmd == "set_params":
            return self.set_params(request["params"])
        if cmd == "save":
            try:
                path = self.save()
            except SaveError as exc:
                raise ValueError(str(exc)) from None
            if path is None:
                raise ValueError("there is no stack to save yet")
            return {"path": str(path), "number": self._saves, "index": str(self._index)}
        if cmd == "pause":
            return self.set_paused(True)
        if cmd == "resume":
            return self.set_paused(False)
        if cmd == "shutdown":
            return {"stopping": True}
        if cmd == "history":
            return history(self._index)
        if cmd == "load":
            return load_stack(self._index, request["file"])
        if cmd in ("camera", "camera_hello", "camera_result"):
            raise ValueError("camera requests are relayed by the control socket only")
        raise ValueError(f"unknown command {cmd!r}")  # check_request prevents this

    # -- commands ------------------------------------------------------------------------

    def reset(self) -> dict[str, Any]:
        """Save the current stack (if it can be), then start a new one (segment + 1)."""
        try:
            saved = self.save(reason="reset")
        except SaveError as exc:  # logged and in the status; the user asked for a reset
            log.warning("reset without saving the stack before: %s", exc)
            saved = None
        with self._stacker_lock:
            self._stacker.reset()
            self._stack_format = None
            self._version += 1
            self._segment += 1
            self._resets += 1
            self._snap_stats = {}
            self._taken = None
            segment = self._segment
        self._latest_stack = None
        return {"saved": str(saved) if saved else None, "segment": segment}

    def set_param(self, name: str, value: Any) -> dict[str, Any]:
        """Change a live parameter (validated by the stacker); return its new value.

        An accepted change makes a new stack: the snapshot thread blends the stack again
        from the frames in the buffer (no new frame needed, e.g. after the source stopped).
        """
        new = self.set_params({name: value})["params"][name]
        return {"name": name, "value": new}

    def set_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Change several live parameters at once, validated together; return their new
        values as ``{"params": {name: value}}``.

        Values that only fit together (``warmup=300`` with ``buffer_size=400``) are
        accepted in any order; a bad one among them changes nothing. An accepted change
        makes a new stack: the snapshot thread blends the stack again from the buffer.
        """
        if not values:
            raise ValueError("set_params needs at least one parameter")
        checked = {name: check_live_value(name, value) for name, value in values.items()}
        with self._stacker_lock:
            self._stacker.set_params(checked)
            new = {name: plain(param_value(self._stacker.params, name, value))
                   for name, value in checked.items()}
            self._version += 1
        return {"params": new}

    def set_paused(self, paused: bool) -> dict[str, Any]:
        """Pause (frames received are dropped as ``paused``) or resume stacking."""
        with self._stacker_lock:
            self._paused = paused
        return {"state": "paused" if paused else "running"}

    @property
    def paused(self) -> bool:
        return self._paused

    def snapshot(self) -> StackerSnapshot | None:
        """The stacker's current snapshot (or None)."""
        with self._stacker_lock:
            return self._stacker.snapshot()

    def save(self, *, timeout: float | None = None,
             max_snapshot_seconds: float | None = None, reason: str = "request") -> Path | None:
        """Write the current stack into a new file of the stack history; return it.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for a busy stacker (None: as long as it takes).
        max_snapshot_seconds : float, optional
            If the last snapshot took longer than this, do not take a new one.
        reason : str
            Why: ``"request"`` (a ``save`` command: a file is always written),
            ``"periodic"``, ``"reset"`` or ``"stop"`` (written only if the stack changed
            since the last save; else the last file is returned). Recorded in the index.

        Returns
        -------
        Path or None
            The file holding the current stack, or None when there is no stack yet.
            When no new snapshot can be had in time, the latest snapshot taken is saved
            instead (if it belongs to the current stack).

        Raises
        ------
        SaveError
            If the file or the index could not be written (recorded for the status).
        """
        if reason not in SAVE_REASONS:
            raise ValueError(f"reason must be one of {SAVE_REASONS}, got {reason!r}")
        if not self._save_lock.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("a save is already under way; not saving again")
            return None
        try:
            return self._save(timeout, max_snapshot_seconds, reason)
        finally:
            self._save_lock.release()

    def _save(self, timeout: float | None, max_snapshot_seconds: float | None,
              reason: str) -> Path | None:
        """The body of :meth:`save`, under the save lock."""
        slow = (max_snapshot_seconds is not None
                and self._snapshot_seconds > max_snapshot_seconds)
        params = self._stacker.params
        taken = None if slow else self._snapshot(timeout)
        if taken is not None and taken.params is not params:  # changed since: re-blend
            taken = self._snapshot(timeout, fresh=True) or taken
        if taken is None:
            taken = self._taken
            if taken is None or taken.segment != self._segment:
                return None
            if taken.version != self._version:
                log.warning("the stacker is busy: saving the latest snapshot, taken "
                            "before the last frames were stacked")
        same = (taken.version, taken.params) == self._saved_state
        if same and reason != "request" and self._last_save["path"] is not None:
            return self._last_save["path"]
        snap, segment = taken.snap, taken.segment
        frames, newest = taken.counters["frames"], taken.counters["newest"]
        now = time.time()
        number = self._saves + 1
        path = stack_file(self.output_dir, self.session, number, now,
                          self.config.output.format)
        # the stacker's own count includes the frames it collected while warming up,
        # which are in the stack although their add() said "warmup"
        stats = snap.stats
        admitted = int(stats.get("admitted", frames["admitted"]))
        metadata = {
            "software": "live-stack daemon",
            "session": self.session,
            "segment": segment,
            "frames_processed": frames["processed"],
            "frames_admitted": admitted,
            "frames_in_buffer": int(stats.get("buffer_fill", 0)),
            "newest_capture_time": newest["time"] or 0.0,
            "saved_time": now,
        }
        record = index_record(file=path, number=number, reason=reason, time=now,
                              metadata=metadata,
                              quality=plain(stats.get("quality", {})), params=plain(params))
        try:
            save_stack(path, snap.image, metadata)
        except Exception as exc:  # OSError: disk full, read-only...; else a bug
            raise self._save_failed(f"cannot write {path.name} in {self.output_dir}", exc,
                                    now, stage="stack") from None
        self._saves = number
        self._saved_state = (taken.version, taken.params)
        self._last_save = {"path": path, "time": now}
        try:
            append_index(self._index, record)
        except OSError as exc:
            raise self._save_failed(f"{path.name} was written but the index "
                                    f"{self._index.name} could not be updated", exc,
                                    now, stage="index") from None
        self._save_succeeded()
        log.info("stack saved to %s (%s; %d frames admitted)", path, reason, admitted)
        return path

    def _save_failed(self, what: str, exc: Exception, when: float, *,
                     stage: str) -> SaveError:
        """Record a failed save for the status; log it once (then count); the error.

        A failure is logged again only when its ``stage`` (``stack`` or ``index``) or
        its reason changes, not for each new file name.
        """
        disk = isinstance(exc, OSError)
        reason = describe_os_error(exc) if disk else repr(exc)
        message = f"{what}: {reason}"
        error = self._save_error or {"first_time": when, "count": 0, "key": None}
        key = (stage, reason)
        if error["key"] != key:
            log.error("saving the stack failed: %s (further failures are counted in the "
                      "status, and logged again when the error changes)", message,
                      exc_info=None if disk else exc)
        self._save_error = {"message": message, "time": when, "key": key,
                            "first_time": error["first_time"], "count": error["count"] + 1}
        return SaveError(message, no_room=isinstance(exc, OSError) and exc.errno in NO_ROOM)

    def _save_succeeded(self) -> None:
        error, self._save_error = self._save_error, None
        if error is not None:
            log.info("saving works again, after %d failed save(s) since %s: %s",
                     error["count"], time.strftime("%H:%M:%S",
                                                   time.localtime(error["first_time"])),
                     error["message"])

    def _save_loop(self) -> None:
        while not self._stop.wait(self.config.output.save_interval):
            try:
                self.save(reason="periodic")
            except SaveError:
                pass  # logged once and shown in the status

    def _output_status(self) -> dict[str, Any]:
        """The ``output`` part of the status: saves, their errors, the disk's space."""
        handler = self._log_handler
        return {"directory": str(self.output_dir), "format": self.config.output.format,
                "last_saved": plain(self._last_save["path"]),
                "last_saved_time": self._last_save["time"], "saves": self._saves,
                "index": str(self._index),
                "save_error": None if self._save_error is None else {
                    k: v for k, v in self._save_error.items() if k != "key"},
                "log_error": getattr(handler, "failed", None),
                "disk": self._check_free_space()}

    def _check_free_space(self, *, starting: bool = False) -> dict[str, Any] | None:
        """The output disk's free space for the status; logs a warning when it falls
        under ``output.warn_free_mib`` (once per fall)."""
        out = self.config.output
        free = free_bytes(self.output_dir)
        if free is None:
            return None
        low = free < out.warn_free_mib * MIB
        if low and (starting or not self._low_space):
            log.warning("the output disk of %s has only %.0f MiB free (output.warn_free_mib "
                        "%g)%s", self.output_dir, free / MIB, out.warn_free_mib,
                        f"; recording stops at {out.min_free_mib:g} MiB" if self._recorder
                        else "")
        self._low_space = low
        return {"free_mib": round(free / MIB, 1), "low": low,
                "warn_free_mib": out.warn_free_mib, "min_free_mib": out.min_free_mib}

    # -- status --------------------------------------------------------------------------

    def _diagnose(self, counters: dict[str, Any]) -> Diagnosis | None:
        """Why frames do not reach the stack now (None: they do); logged when it changes."""
        ep = self.endpoints or self.config.endpoints
        found = diagnose(counters, has_stack=self._taken is not None, paused=self._paused,
                         warmup=param_value(self._stacker.params, "warmup", None),
                         ingest=ep.ingest)
        with self._diagnosis_lock:
            before, self._diagnosis = self._diagnosis, found
        if found is not None and found.fault and (before is None or before.kind != found.kind):
            log.warning("%s", found.text)
        elif found is None and before is not None and before.fault:
            log.info("frames reach the stack again")
        return found

    def status(self) -> dict[str, Any]:
        """The ``status`` message (see docs/protocol.md)."""
        s = self._stats.as_dict()
        snap = self._snap_stats
        # read without the stacker lock, so that a status never waits for a slow frame
        params = plain(self._stacker.params)
        state = "paused" if self._paused else "running"
        segment, resets = self._segment, self._resets
        if self.stop_requested.is_set():
            state = "stopping"
        ep = self.endpoints or self.config.endpoints
        s.update(
            v=protocol.PROTOCOL_VERSION,
            time=time.time(),
            state=state,
            uptime_s=time.monotonic() - self._start_time,
            session=self.session,
            segment=segment,
            resets=resets,
            rates=dict(self._rates),
            queue={"fill": len(self._queue), "size": self._queue.maxsize,
                   "bytes": self._queue.nbytes},
            buffer={"fill": snap.get("buffer_fill", 0), "size": snap.get("buffer_size", 0)},
            aps=snap.get("aps", 0),
            quality=snap.get("quality", {}),
            timings_ms=snap.get("timings_ms", {}),
            stacker=snap,
            stack=dict(self._stack_info),
            latency_s=self._stack_info.get("latency_s"),
            recording=self._recorder.as_dict() if self._recorder else None,
            output=self._output_status(),
            endpoints=dataclasses.asdict(ep),
            curve=self.config.curve.enabled,
            curve_refused=self._keys.refused if self._keys is not None else 0,
            params=params,
            camera=self._camera.as_dict(),
        )
        diagnosis = self._diagnose(s)
        s["diagnosis"] = diagnosis.as_dict() if diagnosis is not None else None
        return s
