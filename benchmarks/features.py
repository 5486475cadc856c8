"""Cost of the optional stacking features of ``live-stack reprocess`` (issue 7).

Runs ``live-stack reprocess`` in fresh child processes on a simulated 640x480 moon
capture (mono, and the same scene in colour re-recorded as a raw RGGB Bayer SER), once
per feature, and prints the wall time (start-up included) and the peak resident set of
each run next to the default run's:

* drizzle 1.5x, 2x, 3x, and 2x resampling;
* calibration with a master dark and a master flat;
* demosaicing (bilinear, VNG, edge-aware) of the Bayer capture;
* dispersion correction, normalisation and sharpening (colour and mono).

Usage::

    python3 benchmarks/features.py [--cache DIR] [--frames 300]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import add_cache_option, cached_capture, peak_rss_command, print_header

#: Frames and size of the simulated captures.
FRAMES = 300
WIDTH, HEIGHT = 640, 480
#: Longest a single run may take, seconds.
TIMEOUT_S = 900
#: Level of the synthetic master dark and flat (a calibration that changes little).
DARK_LEVEL = 0.02
FLAT_LEVEL = 0.7


def bayer_capture(cache: Path, frames: int) -> Path:
    """The colour moon re-recorded as a raw RGGB SER (cached)."""
    from live_stack.colour import mosaic
    from live_stack.io import open_source
    from live_stack.io.ser import SerWriter
    from live_stack.simulate import simulate_capture

    folder = cache / f"bayer-moon-n{frames}-w{WIDTH}-h{HEIGHT}"
    path = folder / "bayer.ser"
    if not path.is_file():
        print(f"(simulating {frames} colour frames into {folder} ...)", flush=True)
        info = simulate_capture("moon", frames=frames, out_dir=folder, seed=1, width=WIDTH,
                                height=HEIGHT, colour=True)
        tmp = folder / "bayer.ser.tmp"
        with open_source(info.video) as src, SerWriter(tmp, width=WIDTH, height=HEIGHT,
                                                       layout="RGGB") as writer:
            for i in range(len(src)):
                writer.write(mosaic(src[i], "RGGB"))
        tmp.rename(path)
    return path


def masters(folder: Path) -> tuple[Path, Path]:
    """A smooth synthetic master dark and flat of the capture's size."""
    from live_stack.io.images import write_image

    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    r2 = ((y - HEIGHT / 2) ** 2 + (x - WIDTH / 2) ** 2) / ((HEIGHT / 2) ** 2 + (WIDTH / 2) ** 2)
    dark, flat = folder / "dark.tif", folder / "flat.tif"
    write_image(dark, np.full((HEIGHT, WIDTH), DARK_LEVEL, np.float32), metadata={"master": "dark"})
    write_image(flat, (FLAT_LEVEL * (1 - 0.3 * r2)).astype(np.float32),
                metadata={"master": "flat"})
    return dark, flat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--frames", type=int, default=FRAMES, help=f"frames (default {FRAMES})")
    args = p.parse_args()
    print_header("Optional stacking features: time and memory of live-stack reprocess")
    mono = cached_capture(args.cache, "moon", frames=args.frames, width=WIDTH, height=HEIGHT)
    bayer = bayer_capture(Path(args.cache), args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.tif"
        dark, flat = masters(Path(tmp))
        cases = [
            ("mono: default", mono.video, []),
            ("mono: drizzle 1.5x", mono.video, ["--drizzle-scale", "1.5"]),
            ("mono: drizzle 2x", mono.video, ["--drizzle-scale", "2"]),
            ("mono: drizzle 3x", mono.video, ["--drizzle-scale", "3"]),
            ("mono: resample 2x", mono.video, ["--drizzle-scale", "2", "--drizzle-method",
                                               "resample"]),
            ("mono: dark + flat", mono.video, ["--dark", str(dark), "--flat", str(flat)]),
            ("mono: normalize + wavelet", mono.video, ["--normalize-enabled",
                                                       "--sharpen-method", "wavelet"]),
            ("bayer: bilinear", bayer, []),
            ("bayer: vng", bayer, ["--colour-debayer", "vng"]),
            ("bayer: ea", bayer, ["--colour-debayer", "ea"]),
            ("bayer: rgb-align + unsharp", bayer, ["--rgb-align", "--sharpen-method",
                                                   "unsharp"]),
            ("bayer: drizzle 2x", bayer, ["--drizzle-scale", "2"]),
        ]
        print(f"{args.frames} frames of {WIDTH}x{HEIGHT}, stack 10%")
        print(f"{'case':<30} {'wall s':>8} {'peak MiB':>9}")
        for name, video, extra in cases:
            # --overwrite: every case writes the same file (other parameters each time)
            r = peak_rss_command(["reprocess", str(video), "-o", str(out), "-q", "--overwrite",
                                  *extra], timeout=TIMEOUT_S)
            print(f"{name:<30} {r['wall_s']:8.2f} {r['vmhwm_mib']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
