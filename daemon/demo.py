"""``live-stack demo``: simulate a capture and stack it live through a daemon.

1. :func:`live_stack.simulate.simulate_capture` renders a capture of the Moon (or a
   planet, or the Sun) through simulated seeing, with its sharp truth;
2. a daemon (:class:`~daemon.service.StackingService` with the live stacker, in this
   process) listens on free loopback ports;
3. a replay source plays the capture to it as if it were live, while the progress is
   shown from the daemon's status messages;
4. the final stack is written beside the truth, and its PSNR against the truth is
   printed next to a single frame's.

Everything goes into ``./live-stack-demo/``: ``stack.tif``, ``truth.tif``,
``capture/`` (the simulated ``video.ser`` and ``truth.json``) and ``daemon/`` (the
daemon's session log and its own saved stack).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from daemon.client import Subscriber
from daemon.config import build_config
from daemon.service import StackingService
from daemon.sources import FramePusher
from daemon.sources.replay import ReplayParams, replay

log = logging.getLogger(__name__)

#: Seconds without any progress after which the demo gives up.
STALL_TIMEOUT = 60.0

#: Seconds a status message is waited for at a time.
STATUS_WAIT = 1.0

#: Bind on any free loopback port.
ANY_LOOPBACK = "tcp://127.0.0.1:*"


@dataclass(frozen=True)
class DemoParams:
    """What the demo simulates and how it plays it."""

    frames: int = 300  # frames in the simulated capture
    out: Path = Path("live-stack-demo")  # output folder
    scene: str = "moon"  # "moon", "planet" or "sun"
    width: int = 640  # frame width, pixels
    height: int = 480  # frame height, pixels
    fps: float = 60.0  # pace of the replay, frames per second (0: as fast as possible)
    seeing: str = "normal"  # seeing preset of the simulation
    seed: int = 0  # simulation seed

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name, low in (("frames", 1), ("width", 16), ("height", 16), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or self.fps < 0:
            raise ValueError(f"fps must be a number >= 0, got {self.fps!r}")


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced."""

    stack: Path  # the final stack (stack.tif)
    truth: Path  # the truth beside it (truth.tif)
    psnr: float  # PSNR of the stack against the truth, dB
    ssim: float  # SSIM of the stack against the truth
    frame_psnr: float  # PSNR of the capture's first frame against the truth, dB
    processed: int  # frames the stacker took
    dropped: int  # frames the daemon dropped
    seconds: float  # wall time of the live part


class _Progress:
    """A tqdm bar, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="stacking", unit="frame", file=sys.stderr,
                             dynamic_ncols=True)

    def update(self, done: int, status: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.n = done
        latency = status.get("latency_s")
        self._bar.set_postfix(
            fps=f"{status['rates']['processed_fps']:.0f}",
            admitted=status["frames"]["admitted"],
            dropped=sum(status["drops"].values()),
            latency="-" if latency is None else f"{latency:.2f}s",
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_demo(params: DemoParams, *, progress: bool = True) -> DemoResult:
    """Run the demo; see the module docstring.

    Raises
    ------
    RuntimeError
        If the daemon stops making progress.
    """
    import numpy as np

    from live_stack.io import open_source
    from live_stack.io.images import read_image, write_image
    from live_stack.live import LiveParams, LiveStacker
    from live_stack.simulate import simulate_capture
    from live_stack.simulate.score import score

    out = params.out
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else log.info
    say(f"simulating {params.frames} frames of the {params.scene} "
        f"({params.width}x{params.height}, {params.seeing} seeing) into {out / 'capture'} ...")
    capture = simulate_capture(params.scene, frames=params.frames, out_dir=out / "capture",
                               seed=params.seed, width=params.width, height=params.height,
                               seeing=params.seeing)
    config = build_config({
        "endpoints": {"ingest": ANY_LOOPBACK, "publish": ANY_LOOPBACK,
                      "control": ANY_LOOPBACK},
        "service": {"queue_size": params.frames, "log_level": "info"},
        "output": {"directory": str(out / "daemon"), "save_interval": 0},
    })
    ctx = zmq.Context()
    service = StackingService(config, LiveStacker(LiveParams()), context=ctx)
    stop = threading.Event()
    sent = {"n": 0, "done": False, "error": None}

    def play() -> None:
        try:
            with FramePusher(service.endpoints.ingest, source="demo-replay", context=ctx,
                             stop=stop) as pusher:
                sent["n"] = replay(ReplayParams(capture.video, fps=params.fps), pusher,
                                   stop=stop)
        except Exception as exc:  # reported by the main thread
            sent["error"] = exc
        finally:
            sent["done"] = True

    service.start()
    bar = _Progress(params.frames, progress)
    player = threading.Thread(target=play, name="demo-replay")
    t0 = time.monotonic()
    try:
        say(f"daemon listening: ingest {service.endpoints.ingest}, publish "
            f"{service.endpoints.publish}, control {service.endpoints.control}")
        with Subscriber(service.endpoints.publish, topics=(b"status",), context=ctx) as sub:
            player.start()
            last_progress, done = time.monotonic(), -1
            while True:
                msg = sub.recv(timeout=STATUS_WAIT)
                if sent["error"] is not None:
                    raise RuntimeError(f"the replay failed: {sent['error']}")
                if msg is None:
                    if time.monotonic() - last_progress > STALL_TIMEOUT:
                        raise RuntimeError(f"no progress for {STALL_TIMEOUT:g} s")
                    continue
                st = msg.header
                handled = st["frames"]["processed"] + sum(st["drops"].values())
                if handled != done:
                    done, last_progress = handled, time.monotonic()
                bar.update(handled, st)
                if sent["done"] and handled >= sent["n"] and st["queue"]["fill"] == 0:
                    break
                if time.monotonic() - last_progress > STALL_TIMEOUT:
                    raise RuntimeError(f"no progress for {STALL_TIMEOUT:g} s")
        seconds = time.monotonic() - t0
        snap = service.snapshot()
        status = service.status()
    finally:
        bar.close()
        stop.set()
        if player.is_alive():
            player.join()
        service.stop()
        ctx.term()
    if snap is None:
        raise RuntimeError("the stacker produced no stack (too few frames?)")
    stack_path = out / "stack.tif"
    meta = {"software": "live-stack demo", "scene": params.scene, "frames": params.frames,
            "admitted": status["frames"]["admitted"], "seed": params.seed}
    write_image(stack_path, snap.image, metadata=meta)
    truth_path = out / "truth.tif"
    shutil.copyfile(capture.truth, truth_path)
    truth, _ = read_image(truth_path)
    with open_source(capture.video) as src:
        first = src[0]
    scale = np.float32(1.0 / np.iinfo(first.dtype).max)
    frame_score = score(first.astype(np.float32) * scale, truth)
    stack_score = score(snap.image, truth)
    return DemoResult(stack=stack_path, truth=truth_path, psnr=stack_score.psnr,
                      ssim=stack_score.ssim, frame_psnr=frame_score.psnr,
                      processed=status["frames"]["processed"],
                      dropped=sum(status["drops"].values()), seconds=seconds)


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def main(argv: Sequence[str]) -> int:
    """Entry point of ``live-stack demo``."""
    d = DemoParams()
    p = argparse.ArgumentParser(
        prog="live-stack demo",
        description="Simulate a capture, stack it live through a daemon, and leave the "
        "final stack and the truth beside it in the output folder.",
    )
    p.add_argument("--frames", type=int, default=d.frames,
                   help=f"frames to simulate (default {d.frames})")
    p.add_argument("--out", type=Path, default=d.out,
                   help=f"output folder (default ./{d.out})")
    p.add_argument("--scene", choices=("moon", "planet", "sun"), default=d.scene,
                   help=f"what to simulate (default {d.scene})")
    p.add_argument("--size", type=_size, default=(d.width, d.height), metavar="WxH",
                   help=f"frame size (default {d.width}x{d.height})")
    p.add_argument("--fps", type=float, default=d.fps,
                   help=f"replay pace, frames per second (default {d.fps:g}; 0: no pacing)")
    p.add_argument("--seeing", default=d.seeing, help=f"seeing preset (default {d.seeing})")
    p.add_argument("--seed", type=int, default=d.seed, help="simulation seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(list(argv))
    root = logging.getLogger()
    if not root.handlers:  # the console shows warnings; the daemon's session log, details
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
    try:
        params = DemoParams(frames=args.frames, out=args.out, scene=args.scene,
                            width=args.size[0], height=args.size[1], fps=args.fps,
                            seeing=args.seeing, seed=args.seed)
    except ValueError as exc:
        print(f"live-stack demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_demo(params, progress=not args.quiet)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"live-stack demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"stacked {result.processed} frames live in {result.seconds:.1f} s "
          f"({result.dropped} dropped)")
    print(f"final stack: {result.stack}")
    print(f"truth:       {result.truth}")
    print(f"PSNR against the truth: stack {result.psnr:.2f} dB (SSIM {result.ssim:.3f}), "
          f"single frame {result.frame_psnr:.2f} dB")
    return 0
