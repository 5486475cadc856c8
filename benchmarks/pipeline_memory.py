"""Peak memory of ``live-stack reprocess``: independent of the number of frames.

Issue 2's figures: peak RSS under 400 MB for 5000 frames of 640x480 and for 2000 frames
of 1280x960. Each case runs ``live-stack reprocess`` with the default parameters in a
fresh child process that reports its own peak resident set (``VmHWM``; ``ru_maxrss`` is
printed too). A short capture of each size shows that the peak does not grow with the
frame count. The long captures cycle through a few hundred distinct simulated frames
(cached in ``--cache``): the pipeline's memory and work per frame are the same.

Usage::

    python3 benchmarks/pipeline_memory.py [--cache DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import add_cache_option, cycled_capture, peak_rss_command, print_header

#: (width, height, frames) of the cases; the short ones first.
CASES = [(640, 480, 500), (640, 480, 5000), (1280, 960, 200), (1280, 960, 2000)]
QUICK_CASES = [(640, 480, 300), (640, 480, 1500), (1280, 960, 100), (1280, 960, 500)]
#: Distinct simulated frames the long captures cycle through, per frame size.
DISTINCT = {(640, 480): 500, (1280, 960): 100}
#: Target of issue 2, MiB.
TARGET_MIB = 400
#: Longest a single run may take, seconds.
TIMEOUT_S = 1800


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--quick", action="store_true", help="shorter captures")
    args = p.parse_args()
    print_header("reprocess peak memory (child process VmHWM)")
    cases = QUICK_CASES if args.quick else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, n in cases:
            cap = cycled_capture(args.cache, "moon", frames=n, width=w, height=h,
                                 distinct=DISTINCT[(w, h)])
            size_mib = cap.video.stat().st_size / 2**20
            # --overwrite: every case writes s.tif, which reprocess would otherwise refuse
            # to replace (made from another input)
            r = peak_rss_command(["reprocess", str(cap.video), "-o", str(Path(tmp) / "s.tif"),
                                  "-q", "--overwrite"], timeout=TIMEOUT_S)
            rows.append((w, h, n, size_mib, r))
            print(f"{w}x{h} {n:5d} frames (SER {size_mib:7.0f} MiB): peak RSS "
                  f"{r['vmhwm_mib']:6.0f} MiB (ru_maxrss {r['ru_maxrss_mib']:.0f}), "
                  f"{r['wall_s']:.1f} s", flush=True)
    print()
    print("| frames | size | SER MiB | peak RSS MiB | target |")
    print("|---:|---|---:|---:|---|")
    for w, h, n, size_mib, r in rows:
        long = n == max(c[2] for c in cases if c[:2] == (w, h))
        target = (f"< {TARGET_MIB}: {'met' if r['vmhwm_mib'] < TARGET_MIB else 'NOT met'}"
                  if long else "(short capture, for comparison)")
        print(f"| {n} | {w}x{h} | {size_mib:.0f} | {r['vmhwm_mib']:.0f} | {target} |")
    for w, h in sorted({(c[0], c[1]) for c in cases}):
        peaks = [r["vmhwm_mib"] for cw, ch, _, _, r in rows if (cw, ch) == (w, h)]
        print(f"{w}x{h}: long / short peak = {peaks[-1] / peaks[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
