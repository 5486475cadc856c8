"""End-to-end rate, drops and latency of the live-stack daemon.

For each frame size and offered rate, a daemon (this process, real LiveStacker) is fed
by ``live-stack source replay`` (a separate process) playing a simulated capture at that
rate for a while. The capture has as many distinct frames as the fastest run sends (at
most ``--capture-frames``; it is looped beyond), cached in ``--cache``: a camera never
sends the same frame twice, and a looped short capture would fill the buffer with
copies of its best frames and keep the stacker admitting them. Printed per run:

- ``sent/s``: frames the source pushed per second;
- ``stacked/s``: frames the stacker took per second;
- ``dropped``: the share of the frames sent that the daemon dropped (queue overflow);
- ``2nd half``: stacked/s, dropped share and largest latency over the second half of
  the run only (after the warm-up and the filling of the buffer: the sustained rate);
- ``latency``: for every stack published, the time from the moment its newest frame was
  pushed (the replay stamps each frame with its send time) to the moment a subscriber
  received the stack: median, 95th percentile and maximum.

Usage::

    python benchmarks/daemon_throughput.py [--sizes 640x480 1280x960]
        [--rates 100 200 300 0] [--seconds 6] [--capture-frames 6000] [--cache DIR]

A rate of 0 pushes as fast as possible. Targets (issue 4): 300 frames/s of 640x480 with
no drops, and a published stack at most 1 s behind the newest frame.

``--transport-only`` replaces the live stacker by :class:`TransportOnly`, which stacks
nothing (its "stack" is the latest frame): the figures are then those of the daemon's
own machinery (sockets, decoding, queue, publishing), without the cost of stacking.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import zmq
from _common import add_cache_option, cached_capture, print_header

from daemon.client import Subscriber
from daemon.config import build_config
from daemon.service import StackingService

#: Seconds given to the daemon to work off its queue after the source stops.
DRAIN_SECONDS = 10.0


def capture(cache: str, size: tuple[int, int], frames: int) -> str:
    """A simulated Moon capture of ``frames`` distinct frames (cached)."""
    return str(cached_capture(cache, "moon", frames=frames, width=size[0],
                              height=size[1]).video)


class TransportOnly:
    """NOT a stacker: takes frames and does nothing with them but keep the latest, to
    measure the daemon's own throughput (``--transport-only``). It offers everything the
    service calls (daemon.service.Stacker)."""

    params = None

    def __init__(self) -> None:
        self._last: np.ndarray | None = None

    def add(self, frame: np.ndarray, timestamp: float | None = None) -> object:
        self._last = frame
        return _Admitted

    def add_batch(self, frames: list[np.ndarray],
                  timestamps: list[float] | None = None) -> list[object]:
        return [self.add(f) for f in frames]

    def catch_up(self, budget: int) -> bool:
        return False  # it defers nothing

    def close(self) -> None:
        pass  # it has no threads

    def snapshot(self) -> object | None:
        if self._last is None:
            return None
        image = self._last.astype(np.float32) / np.float32(np.iinfo(self._last.dtype).max)
        return _Snap(image)

    def reset(self) -> None:
        self._last = None

    def set_params(self, values: dict) -> None:
        raise ValueError(f"unknown parameter {next(iter(values))!r}")


class _Admitted:
    admitted, reason, quality = True, None, 0.0


class _Snap:
    def __init__(self, image: np.ndarray) -> None:
        self.image, self.stats, self.ap_centres, self.ap_size = image, {}, np.zeros((0, 2)), 0


def run(video: str, rate: float, seconds: float, queue_size: int | None,
        transport_only: bool) -> dict[str, float]:
    from daemon.cli import make_stacker

    stacker = TransportOnly() if transport_only else make_stacker({})  # as the daemon does
    any_port = "tcp://127.0.0.1:*"
    with tempfile.TemporaryDirectory() as out:
        config = build_config({
            "endpoints": {"ingest": any_port, "publish": any_port, "control": any_port},
            "service": {"log_level": "warning",
                        **({} if queue_size is None else {"queue_size": queue_size})},
            "output": {"directory": out, "save_interval": 0, "session_log": False},
        })
        ctx = zmq.Context()
        service = StackingService(config, stacker, context=ctx)
        service.start()
        latencies: list[float] = []
        stop = threading.Event()

        def listen() -> None:
            with Subscriber(service.endpoints.publish, topics=(b"stack",), context=ctx) as sub:
                while not stop.is_set():
                    msg = sub.recv(timeout=0.2)
                    if msg is not None:
                        newest = msg.header["meta"]["newest"]["time"]
                        latencies.append((time.monotonic(), time.time() - newest))

        listener = threading.Thread(target=listen)
        listener.start()
        count = int(rate * seconds) if rate > 0 else 0
        cmd = [sys.executable, "-m", "live_stack.cli", "source", "replay", video, "--loop",
               "--fps", str(rate), "--to", service.endpoints.ingest]
        if count:
            cmd += ["--count", str(count)]
        t0 = time.monotonic()
        source = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        # the second half of the run: after the warm-up and the filling of the buffer
        half: dict = {}
        try:
            source.wait(timeout=seconds / 2)
        except subprocess.TimeoutExpired:
            half = service.status()
            half["t"] = time.monotonic()
        try:
            source.wait(timeout=seconds / 2 + 30 if count else seconds / 2)
        except subprocess.TimeoutExpired:
            source.terminate()
            source.wait(10)
        pushed = time.monotonic() - t0
        st = service.status()
        if half:
            t_end = time.monotonic()
            got = st["frames"]["received"] - half["frames"]["received"]
            second = {
                "stacked": (st["frames"]["processed"] - half["frames"]["processed"])
                / (t_end - half["t"]),
                "dropped": (st["drops"]["overflow"] - half["drops"]["overflow"]) / max(got, 1),
            }
        else:
            second = {"stacked": float("nan"), "dropped": float("nan")}
        sent = st["frames"]["received"] + st["drops"]["malformed"]
        deadline = time.monotonic() + DRAIN_SECONDS
        while st["queue"]["fill"] and time.monotonic() < deadline:
            stop.wait(0.1)
            st = service.status()
        elapsed = time.monotonic() - t0
        stop.set()
        listener.join()
        service.stop()
        ctx.term()
    drops = st["drops"]["overflow"]
    lat = np.array([v for _, v in latencies[1:]]) if len(latencies) > 1 else np.array([np.nan])
    late = [v for t, v in latencies if half and t >= half["t"]] or [np.nan]
    return {
        "sent_fps": sent / pushed,
        "stacked_fps": st["frames"]["processed"] / elapsed,
        "dropped": drops / max(sent, 1),
        "lat_median": float(np.median(lat)),
        "lat_p95": float(np.percentile(lat, 95)),
        "lat_max": float(np.max(lat)),
        "stacks": len(latencies),
        "second_lat_max": float(np.max(late)),
        "second_stacked_fps": second["stacked"],
        "second_dropped": second["dropped"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x960"])
    p.add_argument("--rates", nargs="+", type=float, default=[50, 100, 200, 300, 0])
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per run")
    p.add_argument("--queue-size", type=int, default=None,
                   help="the daemon's queue size in frames (default: the daemon's default)")
    p.add_argument("--transport-only", action="store_true",
                   help="measure the daemon without stacking (see TransportOnly)")
    p.add_argument("--capture-frames", type=int, default=6000,
                   help="most distinct frames simulated per size (the replay loops beyond)")
    add_cache_option(p)
    args = p.parse_args()
    print_header("live-stack daemon throughput")
    from live_stack.allocator import tune_allocator
    from live_stack.blas import limit_blas_threads

    # as the live-stack entry point does for `live-stack daemon`
    print(f"allocator tuned as by the live-stack command: {tune_allocator()}; "
          f"BLAS limited to one thread: {limit_blas_threads()}")
    mode = "transport only (no stacking)" if args.transport_only else "live stacker"
    from daemon.config import ServiceParams

    queue = (f"queue {args.queue_size} frames" if args.queue_size is not None else
             f"queue {ServiceParams().queue_size} frames / {ServiceParams().queue_mib:g} MiB")
    print(f"daemon throughput, {mode}, {args.seconds:g} s per run, {queue}")
    print(f"{'size':>10} {'offered':>8} {'sent/s':>8} {'stacked/s':>10} {'dropped':>8} "
          f"{'latency median':>15} {'p95':>7} {'max':>7} {'stacks':>7} "
          f"{'2nd half stacked/s':>19} {'dropped':>8} {'latency max':>12}")
    for text in args.sizes:
        w, h = (int(v) for v in text.split("x"))
        fastest = max(args.rates) if min(args.rates) > 0 else 1000.0
        frames = int(min(args.capture_frames, max(300, fastest * args.seconds)))
        video = capture(args.cache, (w, h), frames)
        for rate in args.rates:
            r = run(video, rate, args.seconds, args.queue_size, args.transport_only)
            offered = "max" if rate == 0 else f"{rate:g}"
            print(f"{text:>10} {offered:>8} {r['sent_fps']:8.1f} {r['stacked_fps']:10.1f} "
                  f"{r['dropped']:8.1%} {r['lat_median']:14.2f}s {r['lat_p95']:6.2f}s "
                  f"{r['lat_max']:6.2f}s {r['stacks']:7d} "
                  f"{r['second_stacked_fps']:19.1f} {r['second_dropped']:8.1%} "
                  f"{r['second_lat_max']:11.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
