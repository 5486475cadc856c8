"""Quality of the offline stack against the simulator's truth, per scene.

Issue 2's figure: on each simulated scene (300 frames), PSNR at least 1 dB above the mean
of the globally aligned best 10 % of the frames, and SSIM above it. For each scene the
pipeline runs with the default parameters (stack 10 %); the table gives PSNR and SSIM
(:func:`live_stack.simulate.score.score`, registered on the truth) of the stack, of the
mean of the globally aligned best 10 % (by the pipeline's own ranking and alignment,
cropped like the stack) and of the best single frame.

Usage::

    python3 benchmarks/pipeline_quality.py [--cache DIR] [--frames 300]
                                           [--size 640x480] [--stack 10%]
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import add_cache_option, cached_capture, print_header

SCENES = ("moon", "planet", "sun")
#: Share of the frames in the mean-of-best baseline (issue 2).
BASELINE_SHARE = 0.10
#: Target of issue 2: the stack's PSNR gain over the baseline, dB.
TARGET_GAIN_DB = 1.0


def main() -> int:
    from live_stack.io import open_source
    from live_stack.io.images import read_image
    from live_stack.pipeline import PipelineParams, run
    from live_stack.reference import mean_aligned
    from live_stack.simulate.score import score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="640x480", help="frame size WxH")
    p.add_argument("--stack", default="10%", help="stack size (default 10%%)")
    p.add_argument("--seeing", default="normal", help="seeing preset of the simulation")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    print_header("offline stack quality against the truth")
    rows = []
    for scene in SCENES:
        cap = cached_capture(args.cache, scene, frames=args.frames, width=w, height=h,
                             seeing=args.seeing)
        truth, _ = read_image(cap.truth)
        with open_source(cap.video) as src:
            t0 = time.perf_counter()
            result = run(src, PipelineParams(stack_sizes=(args.stack,)))
            seconds = time.perf_counter() - t0
            stack = result.stacks[0]
            usable = [int(i) for i in result.ranking.order if result.alignment.ok[i]]
            best = usable[: max(1, round(BASELINE_SHARE * len(usable)))]
            mean = mean_aligned((src[i] for i in best), result.alignment.shifts[best])
            best_frame = src[usable[0]]
        y0, x0, y1, x1 = stack.box
        s_stack = score(stack.image, truth)
        s_mean = score(mean[y0:y1, x0:x1], truth)
        s_best = score(best_frame, truth)
        rows.append((scene, s_stack, s_mean, s_best, len(best), stack.frames_per_ap,
                     len(result.grid), seconds))
        print(f"{scene}: stack {s_stack.psnr:.2f} dB / SSIM {s_stack.ssim:.4f}, mean of best "
              f"{len(best)} {s_mean.psnr:.2f} / {s_mean.ssim:.4f}, best frame "
              f"{s_best.psnr:.2f} / {s_best.ssim:.4f} ({seconds:.1f} s)", flush=True)
    print()
    print(f"{args.frames} frames {w}x{h}, seeing {args.seeing}, stack {args.stack}")
    print("| scene | stack PSNR | mean-of-best PSNR | best frame PSNR | gain over mean | "
          "stack SSIM | mean-of-best SSIM | best frame SSIM | APs | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scene, s, m, b, _, _, aps, _ in rows:
        gain = s.psnr - m.psnr
        met = gain >= TARGET_GAIN_DB and s.ssim > m.ssim
        print(f"| {scene} | {s.psnr:.2f} | {m.psnr:.2f} | {b.psnr:.2f} | {gain:+.2f} | "
              f"{s.ssim:.4f} | {m.ssim:.4f} | {b.ssim:.4f} | {aps} | "
              f"{'met' if met else 'NOT met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
