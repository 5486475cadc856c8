"""``live-stack source replay VIDEO``: play a saved capture to a daemon as if it were live.

The frames of a SER file, a video or an image folder (anything
:func:`live_stack.io.open_source` reads) are pushed at the capture's own pace (from its
timestamps) or at ``--fps``. Each frame is sent with the time it is sent as its capture
time, as a camera would (``--original-times`` sends the file's timestamps instead); the
file's own timestamp and frame number go in the header's ``meta``.

A crash-cut SER file (header frame count 0, or more than the file holds) is played from
its complete frames, with a warning saying how many frames the header claimed and how
many are read. A file that cannot be read on the way (truncated or rewritten while it is
played) ends the replay with an error naming the file and the frames sent until then,
which reach the daemon; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.config import check_endpoint
from daemon.sources import FramePusher, add_pusher_arguments, curve_from_args, run_source

log = logging.getLogger(__name__)

#: Frames per second when the file has no usable timestamps and no --fps is given.
DEFAULT_FPS = 30.0

#: Highest pace taken from timestamps (frames per second); faster captures play at this.
MAX_TIMESTAMP_FPS = 1000.0


@dataclass(frozen=True)
class ReplayParams:
    """How to replay a capture."""

    video: Path  # the SER file, video file or image folder to play
    fps: float | None = None  # frames per second; None: the file's pace; 0: as fast as possible
    loop: bool = False  # start again at the end, until stopped
    original_times: bool = False  # send the file's timestamps instead of the time of sending
    count: int = 0  # stop after this many frames (0: all frames, or forever with loop)

    def __post_init__(self) -> None:
        object.__setattr__(self, "video", Path(self.video))
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not (
                math.isfinite(self.fps) and self.fps >= 0
            ):
                raise ValueError(f"fps must be a number >= 0, got {self.fps!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"count must be an integer >= 0, got {self.count!r}")


def frame_offsets(timestamps: np.ndarray | None, n: int, fps: float | None) -> np.ndarray:
    """Seconds from the start at which each of ``n`` frames is due.

    ``fps`` (if given) sets a constant pace (0: all due at once); else the timestamps
    give it if they increase, else :data:`DEFAULT_FPS`.
    """
    if fps is not None:
        return np.zeros(n) if fps == 0 else np.arange(n) / float(fps)
    if timestamps is not None and len(timestamps) == n and n > 1:
        ts = np.asarray(timestamps, dtype=np.float64)
        steps = np.diff(ts)
        if np.all(np.isfinite(ts)) and np.all(steps >= 0) and ts[-1] > ts[0]:
            steps = np.maximum(steps, 1.0 / MAX_TIMESTAMP_FPS)
            return np.concatenate([[0.0], np.cumsum(steps)])
    return np.arange(n) / DEFAULT_FPS


def replay(
    params: ReplayParams,
    pusher: FramePusher,
    *,
    stop: threading.Event,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Push the frames of ``params.video`` through ``pusher`` until done or ``stop``.

    Parameters
    ----------
    params : ReplayParams
        What to play and how fast.
    pusher : FramePusher
        Connected to the daemon's ingest.
    stop : threading.Event
        Set to stop early.
    progress : callable, optional
        Called with the number of frames sent so far after each frame.

    Returns
    -------
    int
        Frames sent.

    Raises
    ------
    live_stack.io.SourceError
        If the file cannot be read.
    """
    from live_stack.io import BAYER_PATTERNS, open_source, salvage_warning

    sent = 0
    with open_source(params.video, salvage=True) as src:
        salvaged = salvage_warning(src)
        if salvaged is not None:
            log.warning("%s", salvaged)
        info = src.info
        n = len(src)
        if n == 0:
            log.warning("%s holds no frames", params.video)
            return 0
        timestamps = src.timestamps()
        offsets = frame_offsets(timestamps, n, params.fps)
        period = offsets[-1] + (offsets[-1] / (n - 1) if n > 1 else 1.0 / DEFAULT_FPS)
        bayer = info.layout if info.layout in BAYER_PATTERNS else None
        start = time.monotonic()
        lap = 0
        log.info("replaying %s: %d frames %dx%d %s, %s", params.video, n, info.width,
                 info.height, info.layout,
                 "as fast as possible" if params.fps == 0 else f"over {period:.1f} s")
        while not stop.is_set():
            for i in range(n):
                due = start + lap * period + offsets[i]
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return sent
                if stop.is_set():
                    return sent
                file_time = float(timestamps[i]) if timestamps is not None else None
                capture = file_time if params.original_times and file_time else time.time()
                meta = {"file": params.video.name, "frame": i, "lap": lap,
                        "bit_depth": info.bit_depth}
                if file_time is not None:
                    meta["file_time"] = file_time
                if not pusher.send(src[i], capture_time=capture, bayer=bayer, meta=meta):
                    return sent
                sent += 1
                if progress is not None:
                    progress(sent)
                if params.count and sent >= params.count:
                    return sent
            lap += 1
            if not params.loop:
                break
    return sent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="live-stack source replay",
        description="Play a saved capture (SER, video or image folder) to a live-stack "
        "daemon as if it were live.",
    )
    parser.add_argument("video", type=Path, help="SER file, video file or image folder")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second (default: the capture's own pace from its "
                        f"timestamps, else {DEFAULT_FPS:g}; 0: as fast as possible)")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many frames (default: all)")
    parser.add_argument("--original-times", action="store_true",
                        help="send the file's timestamps as capture times")
    add_pusher_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``live-stack source replay``."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        params = ReplayParams(args.video, fps=args.fps, loop=args.loop,
                              original_times=args.original_times, count=args.count)
        curve = curve_from_args(args)
        check_endpoint(args.to, name="--to")
    except ValueError as exc:
        print(f"live-stack source replay: error: {exc}", file=sys.stderr)
        return 2
    source_id = args.source_id or f"replay:{params.video.name}"

    def work(stop: threading.Event) -> int:
        from live_stack.io import SourceError

        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent = n

        with FramePusher(args.to, source=source_id, curve=curve, stop=stop) as pusher:
            try:  # inside the pusher, so that the frames sent still reach the daemon
                replay(params, pusher, stop=stop, progress=count)
            except SourceError as exc:
                log.error("replay source: %s; %d frames were sent to %s before", exc, sent,
                          args.to)
                return 1
        log.info("sent %d frames to %s", sent, args.to)
        return 0

    return run_source(work, name="replay")
