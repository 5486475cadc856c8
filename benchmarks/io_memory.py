"""Memory and speed of reading a large SER file: the resident set must stay flat.

Writes a synthetic SER (default 5000 frames of 640x480, 8-bit: 1.5 GB) with
:class:`live_stack.io.ser.SerWriter`, then reads it in fresh child processes:

* ``open``: open the file and read one frame (the baseline resident set);
* ``full``: read every frame in order;
* ``random``: read every frame in a random order.

Each child prints its frames/s and its peak resident set: ``ru_maxrss`` and, on Linux,
``VmHWM`` from ``/proc/self/status``. (On Linux a child's ``ru_maxrss`` starts from its
parent's resident set at fork, so the file is written in a child process too and the
parent stays small; ``VmHWM`` belongs to the child's own address space.) The reader
reads each frame into its own array (no mapping), so the peak of ``full`` and ``random``
stays within a few frames of ``open``, although the file is far larger.

Usage::

    python3 benchmarks/io_memory.py [--dir /tmp] [--frames 5000] [--width 640]
                                    [--height 480] [--bit-depth 8] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from live_stack.io.ser import SerReader, SerWriter

#: Distinct frames generated and cycled through while writing (keeps generation cheap).
DISTINCT_FRAMES = 16
#: KiB per MiB (ru_maxrss is in KiB on Linux).
KIB_PER_MIB = 1024


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def vm_hwm_mib() -> float | None:
    """Peak resident set of this address space (Linux ``VmHWM``) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return None


def write_file(path: str, *, frames: int, width: int, height: int, bit_depth: int) -> float:
    """Write the synthetic SER; return the seconds it took."""
    rng = np.random.default_rng(0)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    top = (1 << bit_depth) - 1
    y, x = np.mgrid[0:height, 0:width]
    base = (0.5 + 0.3 * np.sin(x / 37.0) * np.cos(y / 23.0)) * top
    pool = [
        np.clip(base + rng.normal(0, 0.02 * top, base.shape), 0, top).astype(dtype)
        for _ in range(DISTINCT_FRAMES)
    ]
    t0 = time.perf_counter()
    with SerWriter(path, width=width, height=height, bit_depth=bit_depth) as sw:
        for k in range(frames):
            sw.write(pool[k % DISTINCT_FRAMES], timestamp=1.7e9 + k / 100)
    return time.perf_counter() - t0


def child(path: str, mode: str, shape: list[str]) -> None:
    """Read the file in ``mode`` and print a JSON line of figures; or write it."""
    if mode == "write":
        frames, width, height, bit_depth = (int(v) for v in shape)
        seconds = write_file(path, frames=frames, width=width, height=height, bit_depth=bit_depth)
        print(json.dumps({"seconds": seconds}))
        return
    rss_start = peak_rss_mib()
    t0 = time.perf_counter()
    checksum = 0
    with SerReader(path) as src:
        n = len(src)
        if mode == "open":
            order = np.array([0])
        elif mode == "full":
            order = np.arange(n)
        else:
            order = np.random.default_rng(1).permutation(n)
        if mode == "full":
            for frame in src:
                checksum += int(frame[0, 0])
        else:
            for i in order:
                checksum += int(src[int(i)][0, 0])
        frame_mib = src[0].nbytes / (1 << 20)
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "frames": int(len(order)),
                "seconds": dt,
                "frames_per_s": len(order) / dt if dt > 0 else float("inf"),
                "peak_rss_mib": peak_rss_mib(),
                "vm_hwm_mib": vm_hwm_mib(),
                "rss_before_open_mib": rss_start,
                "frame_mib": frame_mib,
                "checksum": checksum,
            }
        )
    )


def run_child(path: str, mode: str, *extra: str) -> dict:
    """Run this script in a fresh process in ``mode``; return its JSON figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, mode, *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the SER file")
    parser.add_argument("--frames", type=int, default=5000, help="number of frames")
    parser.add_argument("--width", type=int, default=640, help="frame width")
    parser.add_argument("--height", type=int, default=480, help="frame height")
    parser.add_argument("--bit-depth", type=int, default=8, choices=(8, 12, 16))
    parser.add_argument("--keep", action="store_true", help="keep the SER file afterwards")
    parser.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.child[2:])
        return 0

    print("command:", " ".join([sys.executable, *sys.argv]))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )
    workdir = tempfile.mkdtemp(prefix="io_memory_", dir=args.dir)
    path = os.path.join(workdir, "big.ser")
    try:
        shape = [str(v) for v in (args.frames, args.width, args.height, args.bit_depth)]
        seconds = run_child(path, "write", *shape)["seconds"]
        size_mib = os.path.getsize(path) / (1 << 20)
        print(
            f"wrote {args.frames} frames {args.width}x{args.height} {args.bit_depth}-bit: "
            f"{size_mib:.0f} MiB in {seconds:.2f} s ({args.frames / seconds:.0f} frames/s, "
            f"{size_mib / seconds:.0f} MiB/s)"
        )
        print(
            f"{'mode':>7} {'frames':>7} {'frames/s':>10} {'MiB/s':>8} "
            f"{'ru_maxrss MiB':>14} {'VmHWM MiB':>10}"
        )
        for mode in ("open", "full", "random"):
            r = run_child(path, mode)
            hwm = "n/a" if r["vm_hwm_mib"] is None else f"{r['vm_hwm_mib']:.1f}"
            print(
                f"{r['mode']:>7} {r['frames']:>7} {r['frames_per_s']:>10.0f} "
                f"{r['frames_per_s'] * r['frame_mib']:>8.0f} {r['peak_rss_mib']:>14.1f} "
                f"{hwm:>10}"
            )
        print(
            "peak RSS of 'full' and 'random' should stay within a few frames of 'open', "
            f"whatever the file size ({size_mib:.0f} MiB)."
        )
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
