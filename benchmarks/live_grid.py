"""The live stacker's grid on a capture: its cost per frame, its rim, and the snapshot's
quality, for one or more AP settings in one process.

Feeds the frames of a recording into a :class:`live_stack.live.LiveStacker` ten at a time
(as the daemon does), taking a snapshot every ``--every`` frames, and prints per setting:
the APs of the last snapshot, the CPU time per frame of ``add_batch`` and of the last
snapshot, how far the grid's outer boxes end short of the snapshot's crop on each side
(top, left, bottom, right; 0 or less: they reach it), and, where the recording's folder
holds the simulator's ``truth.tif``, the last snapshot's PSNR against it on the whole
area and with ``score()``'s 16-pixel border::

    python3 benchmarks/live_grid.py CAPTURE [CAPTURE ...] [--frames 600] [--every 100]
        [--dense-below 2 0] [--rounds 2]

``CAPTURE`` is a recording (SER, AVI, a folder of images). ``--dense-below`` lists the
``ap_dense_below`` values to compare (alternating, ``--rounds`` times).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import print_header

from live_stack.apgrid import APParams
from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.live import LiveParams, LiveStacker
from live_stack.simulate.score import score

#: Frames handed to the stacker at once.
BATCH = 10


def rim_gaps(snap) -> tuple[int, int, int, int]:
    """How far the outer AP boxes end short of the snapshot's edges (top, left, bottom,
    right)."""
    h, w = snap.image.shape[:2]
    half = snap.ap_size // 2
    c = snap.ap_centres
    return (int((c[:, 0] - half).min()), int((c[:, 1] - half).min()),
            int(h - (c[:, 0] + half).max()), int(w - (c[:, 1] + half).max()))


def run(frames: list, below: float, every: int) -> dict:
    """One pass of the frames through a new stacker."""
    st = LiveStacker(LiveParams(ap=APParams(dense_below=below)))
    gaps = []
    cpu = 0.0
    for i in range(0, len(frames), BATCH):
        t = time.process_time()
        st.add_batch(frames[i : i + BATCH], None)
        cpu += time.process_time() - t
        if (i + BATCH) % every == 0 and i + BATCH < len(frames):
            snap = st.snapshot()
            if snap is not None and len(snap.ap_centres):
                gaps.append(rim_gaps(snap))
    t = time.process_time()
    snap = st.snapshot()
    snap_cpu = time.process_time() - t
    if snap is not None and len(snap.ap_centres):
        gaps.append(rim_gaps(snap))
    return {"snap": snap, "add_ms": 1e3 * cpu / len(frames), "snap_ms": 1e3 * snap_cpu,
            "gaps": gaps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("captures", nargs="+", type=Path)
    p.add_argument("--frames", type=int, default=600, help="frames fed, at most (600)")
    p.add_argument("--every", type=int, default=100, help="a snapshot every N frames (100)")
    p.add_argument("--dense-below", type=float, nargs="+", default=[2.0, 0.0],
                   help="ap_dense_below values to compare (2 0)")
    p.add_argument("--rounds", type=int, default=1, help="alternations (1)")
    args = p.parse_args()
    if args.frames < BATCH or args.every < BATCH or args.every % BATCH or args.rounds < 1:
        p.error(f"--frames must be >= {BATCH}, --every a multiple of {BATCH}, --rounds >= 1")
    print_header("the live stacker's grid: cost, rim and snapshot quality")
    print()
    print("| capture | ap_dense_below | APs | add CPU ms/frame | snapshot CPU ms | rim gaps "
          "(top, left, bottom, right) per snapshot | PSNR whole / 16-px border |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for path in args.captures:
        with open_source(path) as src:
            frames = [src[i] for i in range(min(len(src), args.frames))]
        folder = path if path.is_dir() else path.parent
        truth = read_image(folder / "truth.tif")[0] if (folder / "truth.tif").is_file() else None
        for _ in range(args.rounds):
            for below in args.dense_below:
                r = run(frames, below, args.every)
                snap = r["snap"]
                quality = "-"
                if truth is not None and snap is not None:
                    quality = (f"{score(snap.image, truth, border=0).psnr:.2f} / "
                               f"{score(snap.image, truth).psnr:.2f}")
                aps = len(snap.ap_centres) if snap is not None else 0
                gaps = " ".join(f"({a}, {b}, {c}, {d})" for a, b, c, d in r["gaps"])
                print(f"| {path.parent.name}/{path.name} | {below:g} | {aps} | {r['add_ms']:.2f} | "
                      f"{r['snap_ms']:.0f} | {gaps} | {quality} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
