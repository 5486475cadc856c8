"""Sustained ingest rate of the live stacker, snapshot latency, CPU time per phase.

Issue 3's figure: 640x480 8-bit mono frames at 300 frames/s or better on the 2-core
machine, with the default buffer and a snapshot every second; also 1280x960. Frames of a
simulated moon capture (cached in ``--cache``, loaded into memory first, so that no file
reading is timed) are handed to :meth:`LiveStacker.add_batch` in chunks of ``--chunk``
(the daemon's default batch), as fast as the stacker takes them, and a snapshot is taken
whenever a second has passed. Reported: frames/s (wall time including the snapshots),
admitted and dropped frames, snapshot latency, CPU time per frame (process time) and the
stacker's own time per frame by phase (``stats["timings_ms"]``), and the resident set
once the buffer is full and at the end (it should stay flat; ``--frames 20000`` for the
issue's long replay).

The default parameters keep the best frames of everything seen, so after a while most
new frames are dropped early (cheap); ``--window-frames M`` adds a run with a rolling
window of M frames, where frames keep entering the buffer.

Usage::

    python3 benchmarks/live_rate.py [--cache DIR] [--frames N] [--chunk 8]
                                    [--window-frames 600] [--quick]
                                    [--allocator tuned|default|both]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import KIB_PER_MIB, add_cache_option, cached_capture, median, print_header

#: Distinct simulated frames per frame size (the replay cycles through them).
DISTINCT = {(640, 480): 2000, (1280, 960): 300}
QUICK_DISTINCT = {(640, 480): 500, (1280, 960): 100}
#: Frames per run by default: enough to pass the warm-up and fill the buffer well.
FRAMES = {(640, 480): 2000, (1280, 960): 600}
QUICK_FRAMES = {(640, 480): 600, (1280, 960): 300}
#: Frames handed over per add_batch call (daemon.config's default batch_size: what the
#: daemon hands over when frames pile up).
CHUNK = 32
#: Seconds between snapshots (LiveParams().snapshot_interval).
SNAPSHOT_EVERY_S = 1.0
#: Target of issue 3 for 640x480, frames per second.
TARGET_FPS = 300.0


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / KIB_PER_MIB
    return float("nan")


def replay(frames: list[np.ndarray], total: int, chunk: int, params) -> dict:
    """Feed ``total`` frames (cycling through ``frames``); return the figures."""
    from live_stack.live import LiveStacker

    rss_before = rss_mib()  # the preloaded frames and the libraries
    st = LiveStacker(params)
    period = 0.01  # nominal timestamps: 100 frames per second of capture time
    latencies = []
    rss_full = None
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    last_snap = t_start
    done = 0
    t_half = None  # when half the frames were in: the steady state is measured after it
    while done < total:
        n = min(chunk, total - done)
        batch = [frames[(done + j) % len(frames)] for j in range(n)]
        st.add_batch(batch, [(done + j) * period for j in range(n)])
        done += n
        now = time.perf_counter()
        if t_half is None and done >= total // 2:
            t_half, half = now, done
        if now - last_snap >= SNAPSHOT_EVERY_S:
            t0 = time.perf_counter()
            st.snapshot()
            latencies.append(time.perf_counter() - t0)
            last_snap = time.perf_counter()
            if rss_full is None and st.stats()["buffer_fill"] >= params.buffer_size:
                rss_full = rss_mib()
    t0 = time.perf_counter()
    snap = st.snapshot()
    latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    stats = snap.stats if snap is not None else st.stats()
    steady = (total - half) / (t_start + wall - t_half) if t_half is not None else float("nan")
    return {"wall": wall, "cpu": cpu, "fps": total / wall, "steady_fps": steady,
            "latencies": latencies,
            "stats": stats, "rss_before": rss_before, "rss_full": rss_full,
            "rss_end": rss_mib(), "frames": total}


def run_case(video: str, total: int, chunk: int, window_frames: int, tune: bool) -> dict:
    """One replay in this (fresh) process: load the frames, replay, return the figures.

    ``tune``: set the allocator as the ``live-stack`` entry point does for the daemon
    (:func:`live_stack.allocator.tune_allocator`). The BLAS library is limited to one
    thread in every case, as by the entry point (:func:`live_stack.blas.limit_blas_threads`).
    """
    from dataclasses import replace

    from live_stack.allocator import tune_allocator
    from live_stack.blas import limit_blas_threads
    from live_stack.io import open_source
    from live_stack.live import LiveParams

    if tune and not tune_allocator():
        sys.exit("could not tune the allocator here (not glibc, or MALLOC_TOP_PAD_ is set)")
    limit_blas_threads()

    with open_source(video) as src:
        frames = [np.array(src[i]) for i in range(len(src))]
    params = replace(LiveParams(), window_frames=window_frames)
    return replay(frames, total, chunk, params)


def print_run(name: str, r: dict) -> None:
    s = r["stats"]
    lat = np.array(r["latencies"]) * 1e3
    print(f"## {name}")
    print(f"{r['frames']} frames in {r['wall']:.2f} s: {r['fps']:.0f} frames/s overall, "
          f"{r['steady_fps']:.0f} frames/s over the second half (steady state, after the "
          f"warm-up and the filling of the buffer; snapshots included) "
          f"(CPU {r['cpu'] / r['frames'] * 1e3:.2f} ms per frame over all threads)")
    print(f"admitted {s['admitted']}, dropped {s['dropped']}, evicted {s.get('evicted')}, "
          f"buffer {s['buffer_fill']}/{s['buffer_size']}, APs {s['aps']}, "
          f"frames per AP {s.get('frames_per_ap')}, events {s.get('events')}")
    print(f"snapshots: {len(lat)}, latency median {median(list(lat)):.1f} ms, "
          f"max {lat.max():.1f} ms")
    phases = s.get("timings_ms", {})
    print("stacker time per frame by phase (ms): "
          + "  ".join(f"{k} {v:.3f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]))
          + f"  | sum {sum(phases.values()):.2f}")
    base = r["rss_before"]
    full = f"+{r['rss_full'] - base:.0f} MiB" if r["rss_full"] is not None else "n/a"
    print(f"resident set (fresh process) over the {base:.0f} MiB before the stacker "
          f"(preloaded frames, libraries): buffer full {full}, end "
          f"+{r['rss_end'] - base:.0f} MiB")
    print()


def main() -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per run, cycling through the distinct simulated frames "
                        "(default 2000 at 640x480, 600 at 1280x960)")
    p.add_argument("--chunk", type=int, default=CHUNK, help="frames per add_batch call")
    p.add_argument("--window-frames", type=int, default=600,
                   help="also run with this rolling window (0: skip that run)")
    p.add_argument("--sizes", default="640x480,1280x960", help="comma-separated WxH")
    p.add_argument("--quick", action="store_true", help="fewer frames")
    p.add_argument("--allocator", choices=("tuned", "default", "both"), default="tuned",
                   help="glibc malloc as the live-stack command sets it (tuned), as glibc "
                        "leaves it (default), or both, one after the other")
    args = p.parse_args()
    print_header("live stacker sustained ingest")
    distinct = QUICK_DISTINCT if args.quick else DISTINCT
    spawn = multiprocessing.get_context("spawn")  # each run in a fresh process (clean RSS)
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        cap = cached_capture(args.cache, "moon", frames=distinct.get((w, h), 300), width=w,
                             height=h)
        total = args.frames or (QUICK_FRAMES if args.quick else FRAMES).get((w, h), 600)
        runs = [("default parameters", 0)]
        if args.window_frames:
            runs.append((f"window_frames={args.window_frames}", args.window_frames))
        tunes = {"tuned": (True,), "default": (False,), "both": (True, False)}[args.allocator]
        for (label, window), tune in ((run, t) for run in runs for t in tunes):
            if args.allocator == "both":
                label = f"{label} [{'tuned' if tune else 'default'} allocator]"
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                r = pool.submit(run_case, str(cap.video), total, args.chunk, window,
                                tune).result()
            verdict = {True: "met", False: "NOT met"}
            target = (f", target >= {TARGET_FPS:.0f} frames/s: overall "
                      f"{verdict[r['fps'] >= TARGET_FPS]}, steady state "
                      f"{verdict[r['steady_fps'] >= TARGET_FPS]}"
                      if (w, h) == (640, 480) and not window else "")
            print_run(f"{w}x{h} 8-bit mono, {label}, chunks of {args.chunk}{target}", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
