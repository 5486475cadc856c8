"""Convergence of the live stack: PSNR of successive snapshots on a 1000-frame capture.

Issue 3: on a 1000-frame capture the PSNR of successive snapshots (against the
simulator's truth) rises and settles. The capture (cached in ``--cache``) is replayed
through :class:`LiveStacker` with the default parameters in chunks of 8 frames; a
snapshot is scored every ``--every`` frames. For comparison the offline pipeline runs on
the whole capture (stack 10 %), and the mean of its globally aligned best 10 % and the
best single frame are scored too. The numbers are printed and plotted (drawn with
OpenCV) into a PNG, ``--out`` (default ``benchmarks/out/live_convergence.png``).

Usage::

    python3 benchmarks/live_convergence.py [--cache DIR] [--frames 1000] [--every 25]
                                           [--scene moon] [--size 640x480] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from _common import add_cache_option, cached_capture, print_header

#: Frames per add_batch call (a few frames at a time, as a daemon keeping up hands them
#: over; it hands over up to its batch_size, 32, when they pile up).
CHUNK = 8
#: Plot size and margins, pixels.
PLOT_W, PLOT_H = 960, 540
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 80, 30, 80, 60
#: Colours (BGR).
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
BLUE, GREEN, ORANGE, RED = (200, 90, 20), (40, 150, 40), (0, 140, 255), (40, 40, 200)
FONT = cv2.FONT_HERSHEY_SIMPLEX
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "live_convergence.png"


def nice_step(span: float, count: int) -> float:
    """A 1-2-5 tick step giving about ``count`` ticks over ``span``."""
    raw = span / max(count, 1)
    mag = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def plot(path: Path, xs: list[int], ys: list[float], lines: dict[str, tuple[float, tuple]],
         title: str) -> None:
    """Line plot of ``ys`` over ``xs`` with labelled horizontal reference lines."""
    img = np.full((PLOT_H, PLOT_W, 3), 255, np.uint8)
    x0, x1 = MARGIN_L, PLOT_W - MARGIN_R
    y0, y1 = MARGIN_T, PLOT_H - MARGIN_B
    values = list(ys) + [v for v, _ in lines.values()]
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    xmax = max(xs) if xs else 1

    def px(x: float) -> int:
        return int(round(x0 + (x1 - x0) * x / xmax))

    def py(y: float) -> int:
        return int(round(y1 - (y1 - y0) * (y - lo) / (hi - lo)))

    step = nice_step(hi - lo, 6)
    for v in np.arange(np.ceil(lo / step) * step, hi, step):
        cv2.line(img, (x0, py(v)), (x1, py(v)), GREY, 1)
        cv2.putText(img, f"{v:.1f}", (8, py(v) + 5), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    xstep = nice_step(xmax, 8)
    for v in np.arange(0, xmax + 1, xstep):
        cv2.line(img, (px(v), y1), (px(v), y1 + 5), BLACK, 1)
        cv2.putText(img, f"{int(v)}", (px(v) - 14, y1 + 22), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK, 1)
    # legend: one row above the plot, the live line first
    lx, ly = x0, y0 - 18
    entries = [("live snapshots", None, BLUE)] + [(k, v, c) for k, (v, c) in lines.items()]
    for label, value, colour in entries:
        text = label if value is None else f"{label} {value:.2f} dB"
        cv2.line(img, (lx, ly - 4), (lx + 24, ly - 4), colour, 2)
        cv2.putText(img, text, (lx + 30, ly), FONT, 0.45, colour, 1, cv2.LINE_AA)
        lx += 40 + cv2.getTextSize(text, FONT, 0.45, 1)[0][0]
    for value, colour in lines.values():
        yy = py(value)
        for xx in range(x0, x1, 16):  # dashed
            cv2.line(img, (xx, yy), (min(xx + 8, x1), yy), colour, 2)
    pts = np.array([[px(x), py(y)] for x, y in zip(xs, ys, strict=True)], np.int32)
    if len(pts) > 1:
        cv2.polylines(img, [pts], False, BLUE, 2, cv2.LINE_AA)
    for x, y in pts:
        cv2.circle(img, (int(x), int(y)), 3, BLUE, -1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, 30), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, "frames received", ((x0 + x1) // 2 - 60, PLOT_H - 15), FONT, 0.5, BLACK,
                1, cv2.LINE_AA)
    cv2.putText(img, "PSNR dB", (8, y0 - 4), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cannot write the plot")


def main() -> int:
    from live_stack.io import open_source
    from live_stack.io.images import read_image
    from live_stack.live import LiveParams, LiveStacker
    from live_stack.pipeline import PipelineParams, run
    from live_stack.reference import mean_aligned
    from live_stack.simulate.score import score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--every", type=int, default=25, help="frames between scored snapshots")
    p.add_argument("--scene", default="moon", choices=("moon", "planet", "sun"))
    p.add_argument("--size", default="640x480", help="frame size WxH")
    p.add_argument("--seeing", default="normal", help="seeing preset of the simulation")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    print_header("live stack convergence (PSNR of successive snapshots)")
    cap = cached_capture(args.cache, args.scene, frames=args.frames, width=w, height=h,
                         seeing=args.seeing)
    truth, _ = read_image(cap.truth)
    with open_source(cap.video) as src:
        frames = [np.array(src[i]) for i in range(len(src))]
        stamps = src.timestamps()
    st = LiveStacker(LiveParams())
    xs, ys = [], []
    t0 = time.perf_counter()
    for i in range(0, len(frames), CHUNK):
        st.add_batch(frames[i : i + CHUNK], None if stamps is None else
                     list(stamps[i : i + CHUNK]))
        seen = min(i + CHUNK, len(frames))
        if seen // args.every != (seen - CHUNK) // args.every or seen == len(frames):
            snap = st.snapshot()
            if snap is not None:
                xs.append(seen)
                ys.append(score(snap.image, truth).psnr)
    live_s = time.perf_counter() - t0
    stats = st.stats()
    offline = run(frames, PipelineParams())
    usable = [int(i) for i in offline.ranking.order if offline.alignment.ok[i]]
    best = usable[: max(1, round(0.1 * len(usable)))]
    y0, x0, y1, x1 = offline.stacks[0].box
    mean = mean_aligned([frames[i] for i in best], offline.alignment.shifts[best])
    refs = {
        "offline stack 10%": (score(offline.stacks[0].image, truth).psnr, GREEN),
        f"mean of best {len(best)}": (score(mean[y0:y1, x0:x1], truth).psnr, ORANGE),
        "best frame": (score(frames[usable[0]], truth).psnr, RED),
    }
    print(f"{args.scene}, {len(frames)} frames {w}x{h}, seeing {args.seeing}, live default "
          f"parameters ({live_s:.1f} s including the scored snapshots)")
    print(f"events {stats['events']}, admitted {stats['admitted']}, dropped {stats['dropped']}")
    print("frames  PSNR dB")
    for x, y in zip(xs, ys, strict=True):
        print(f"{x:6d}  {y:7.3f}")
    for label, (value, _) in refs.items():
        print(f"{label}: {value:.3f} dB")
    print(f"last snapshot {ys[-1]:.3f} dB, best {max(ys):.3f} dB (last - best "
          f"{ys[-1] - max(ys):+.3f}), first {ys[0]:.3f} dB")
    plot(args.out, xs, ys, {k: v for k, v in refs.items()},
         f"live-stack: {args.scene} {w}x{h}, {len(frames)} frames, default live parameters")
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
