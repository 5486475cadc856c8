"""Batches on Dask: ``reprocess --workers 2`` against one recording after another.

Issue 15's figures: 20 recordings of 300 frames of 640x480, stacked by
``live-stack reprocess ... --workers 1`` (one process, in turn) and ``--workers 2`` (a
local Dask cluster of two worker processes, one pipeline thread each), in alternating
rounds (the machine is shared: the ratio within a round is the figure); the peak memory
of each worker process; the scheduler's cost per task; and, on paper, what 8 and 32
workers would do, from the per-task time, that overhead and the input bandwidth each
worker needs.

Usage::

    python3 benchmarks/cluster_batch.py [--cache DIR] [--recordings 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KIB_PER_MIB, add_cache_option, cached_capture, print_header

#: Frame size and length of each recording.
WIDTH, HEIGHT, FRAMES = 640, 480, 300
#: Distinct simulated recordings the batch cycles through (copies cost the same to stack).
DISTINCT = 4
#: Trivial tasks timed to measure the scheduler's cost per task.
OVERHEAD_TASKS = 200
#: Worker counts of the figures on paper.
PAPER_WORKERS = (2, 8, 32)
#: Input bandwidths of the figures on paper, MB/s: 1 GbE and 10 GbE network storage, a
#: local NVMe disk.
BANDWIDTHS = {"1 GbE NFS": 110, "10 GbE NFS": 1100, "local NVMe": 2500}
#: Longest a batch may take, seconds.
TIMEOUT_S = 1800


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return its wall time (s) and the peak RSS (MiB) of the process or of
    the largest of its children (``wait4``'s ``ru_maxrss``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed (rc {proc.returncode}): {err}")
    return wall, usage.ru_maxrss / KIB_PER_MIB


def _measured(job, *, threads=None):
    """A batch task that also reports its worker process and that process's peak RSS."""
    from live_stack.reprocess_cli import stack_job

    outcome = stack_job(job, threads=threads)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
    return outcome.status, os.getpid(), peak, outcome.summary.get("total_seconds")


def _nothing(job, *, threads=None):
    return job


def _jobs(inputs: list[Path], out: Path):
    from live_stack.calibrate import CalibParams
    from live_stack.colour import ColourParams
    from live_stack.pipeline import PipelineParams
    from live_stack.reprocess_cli import Job, StackSettings, output_stamp

    settings = StackSettings(PipelineParams(), CalibParams(), ColourParams())
    return [Job(str(p), (str(out / f"{p.stem}.tif"),),
                (output_stamp(str(p), settings, "10%"),), settings) for p in inputs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--recordings", type=int, default=20, help="recordings in the batch")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both runs")
    args = p.parse_args()
    print_header(f"reprocess: {args.recordings} recordings of {FRAMES} frames "
                 f"{WIDTH}x{HEIGHT}, --workers 1 against --workers 2")
    from live_stack.batch import ClusterParams, run_on_dask

    exe = str(Path(sys.executable).parent / "live-stack")
    caps = [cached_capture(args.cache, "moon", frames=FRAMES, width=WIDTH, height=HEIGHT,
                           seed=seed) for seed in range(1, DISTINCT + 1)]
    size_mb = caps[0].video.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = []
        for i in range(args.recordings):
            inputs.append(folder / f"r{i:02d}.ser")
            shutil.copyfile(caps[i % DISTINCT].video, inputs[-1])
        times: dict[int, list[float]] = {1: [], 2: []}
        peaks: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = folder / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                wall, peak = _timed([exe, "reprocess", *map(str, inputs), "-o", str(out),
                                     "--workers", str(workers), "-q"])
                times[workers].append(wall)
                peaks[workers].append(peak)
                print(f"round {r + 1}: --workers {workers}: {wall:.2f} s, "
                      f"largest process {peak:.0f} MiB", flush=True)
        print()
        # each worker's own peak, the per-task time on one thread, and the scheduler's cost
        out = folder / "api"
        out.mkdir()
        t0 = time.perf_counter()
        results = [d.result for d in run_on_dask(_measured, _jobs(inputs, out),
                                                 ClusterParams(workers=2),
                                                 announce=lambda line: None)]
        api_wall = time.perf_counter() - t0
        assert all(status == "stacked" for status, *_ in results), results
        worker_peak: dict[int, float] = {}
        for _, pid, peak, _ in results:
            worker_peak[pid] = max(peak, worker_peak.get(pid, 0.0))
        task_s = sorted(s for *_, s in results)
        t1 = task_s[len(task_s) // 2]
        t0 = time.perf_counter()
        list(run_on_dask(_nothing, list(range(OVERHEAD_TASKS)), ClusterParams(workers=2),
                         announce=lambda line: None))
        empty_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(run_on_dask(_nothing, [0], ClusterParams(workers=2), announce=lambda line: None))
        startup = time.perf_counter() - t0
    per_task = (empty_wall - startup) / (OVERHEAD_TASKS - 1)

    seq, par = min(times[1]), min(times[2])
    ratios = [a / b for a, b in zip(times[1], times[2], strict=True)]
    print(f"recording: {size_mb:.1f} MB")
    print(f"--workers 1 (one process, 2 pipeline threads): best {seq:.2f} s "
          f"({seq / args.recordings:.2f} s per recording), peak {max(peaks[1]):.0f} MiB")
    print(f"--workers 2 (local cluster, 1 thread per task): best {par:.2f} s "
          f"({par / args.recordings:.2f} s per recording), largest process "
          f"{max(peaks[2]):.0f} MiB")
    print("speed-up --workers 2 over --workers 1 per round: "
          + ", ".join(f"{r:.2f}" for r in ratios))
    print("peak RSS per worker process: "
          + ", ".join(f"{v:.0f} MiB" for v in sorted(worker_peak.values())))
    print(f"per-task time on one thread (median of {len(task_s)}): {t1:.2f} s; "
          f"API run {api_wall:.2f} s")
    print(f"cluster start and close: {startup:.2f} s; scheduler cost per task: "
          f"{per_task * 1e3:.1f} ms")
    print()
    print("on paper, one worker per core, each reading its recording once:")
    need = size_mb / t1
    print(f"  each worker reads {need:.0f} MB/s; the scheduler alone would allow "
          f"{1 / per_task:.0f} tasks/s")
    header = "  workers  " + "  ".join(f"{name:>13}" for name in BANDWIDTHS)
    print(header + "   (recordings/s; time for 1000 recordings)")
    for n in PAPER_WORKERS:
        cells = []
        for bandwidth in BANDWIDTHS.values():
            rate = min(n / t1, bandwidth / size_mb, 1 / per_task)
            cells.append(f"{rate:5.1f} {_hours(startup + 1000 / rate):>7}")
        print(f"  {n:7d}  " + "  ".join(f"{c:>13}" for c in cells))
    print(f"  ({math.floor(BANDWIDTHS['1 GbE NFS'] / need * 10) / 10} workers fill a 1 GbE "
          f"link, {math.floor(BANDWIDTHS['10 GbE NFS'] / need)} a 10 GbE one)")
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
