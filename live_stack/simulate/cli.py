"""``live-stack simulate``: write a simulated capture with its truth.

::

    live-stack simulate SCENE --frames N -o DIR [--seed S] [--bits 8|16]
                        [--size WxH] [--drift PX] [--seeing good|normal|poor|worsening]
                        [--colour] [--fps F]
    live-stack simulate SCENE --frames N -o DIR --seeing physical [--d-r0 5]
                        [--electrons 2000] [--read-noise 2] [--layers 0:0.6,1500:0.25,8000:0.15]
                        [--wind 2:0,6:70,15:160] [--drift PX] [--bits 8|16] [--size WxH]

``--seeing physical`` is the physical model (:mod:`live_stack.simulate.turbulence`):
von Karman layers moving with the wind, anisoplanatic short-exposure PSFs, breathing
seeing, mount drift, Poisson and read noise (mono frames).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

from live_stack.simulate import DEFAULT_FPS, simulate_capture
from live_stack.simulate.scenes import MAX_SIZE, SCENES
from live_stack.simulate.seeing import BITS, SEEING_PRESETS
from live_stack.simulate.turbulence import TurbulenceParams

#: The physical model's name for ``--seeing``.
PHYSICAL = "physical"

PROG = "live-stack simulate"
#: Exit code for bad arguments (as argparse uses).
EXIT_USAGE = 2
#: Smallest frame side the command accepts.
MIN_FRAME_SIDE = 16

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class _UsageError(Exception):
    """A bad command line; the message is printed on one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _size(text: str) -> tuple[int, int]:
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT (e.g. 640x480), got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_FRAME_SIDE <= w <= MAX_SIZE and MIN_FRAME_SIDE <= h <= MAX_SIZE):
        raise argparse.ArgumentTypeError(
            f"size sides must be {MIN_FRAME_SIDE}..{MAX_SIZE} pixels, got {text!r}"
        )
    return w, h


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _float(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value == value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"must be {'> 0' if positive else '>= 0'}, got {text!r}")
    return value


def _pairs(text: str) -> tuple[tuple[float, float], ...]:
    pairs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"must be A:B pairs separated by commas, got "
                                             f"{text!r}")
        try:
            a, b = float(parts[0]), float(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"must hold numbers, got {item!r}") from None
        pairs.append((a, b))
    return tuple(pairs)


def _turbulence(args: argparse.Namespace) -> TurbulenceParams:
    """The physical model's parameters from the command line (ValueError if bad)."""
    fields: dict[str, object] = {}
    if args.d_r0 is not None:
        fields["d_over_r0"] = args.d_r0
    if args.electrons is not None:
        fields["electrons"] = args.electrons
    if args.read_noise is not None:
        fields["read_noise"] = args.read_noise
    if args.layers is not None:
        fields["layer_heights_m"] = tuple(h for h, _ in args.layers)
        fields["layer_weights"] = tuple(w for _, w in args.layers)
        if args.wind is None:
            raise ValueError("--layers needs --wind with one speed:direction per layer")
    if args.wind is not None:
        fields["wind_mps"] = tuple(v for v, _ in args.wind)
        fields["wind_deg"] = tuple(d for _, d in args.wind)
    return TurbulenceParams(**fields)  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Render a simulated lucky-imaging capture (video.ser) with its truth "
        "(truth.tif, truth.json).",
    )
    p.add_argument("scene", choices=SCENES, help="what to simulate")
    p.add_argument("--frames", "-n", type=_positive_int, required=True, help="number of frames")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--bits", type=int, choices=BITS, default=8, help="bits per sample")
    p.add_argument(
        "--size", type=_size, default=(640, 480), metavar="WxH", help="frame size (640x480)"
    )
    p.add_argument(
        "--drift",
        type=lambda t: _float(t, positive=False),
        default=None,
        metavar="PX",
        help="total drift over the run in pixels (default 0)",
    )
    p.add_argument("--seeing", choices=(*SEEING_PRESETS, PHYSICAL), default="normal",
                   help="seeing preset, or 'physical' for the physical turbulence model")
    defaults = TurbulenceParams()
    p.add_argument("--d-r0", type=lambda t: _float(t, positive=True), default=None,
                   metavar="F", help=f"physical: aperture over Fried parameter, D/r0 "
                   f"(default {defaults.d_over_r0:g})")
    p.add_argument("--electrons", type=lambda t: _float(t, positive=True), default=None,
                   metavar="E", help=f"physical: electrons in a full-brightness pixel "
                   f"(default {defaults.electrons:g})")
    p.add_argument("--read-noise", type=lambda t: _float(t, positive=False), default=None,
                   metavar="E", help=f"physical: read noise, electrons RMS (default "
                   f"{defaults.read_noise:g})")
    p.add_argument("--layers", type=_pairs, default=None, metavar="H:W,...",
                   help="physical: turbulent layers as height_m:weight (default "
                   + ",".join(f"{h:g}:{w:g}" for h, w in zip(defaults.layer_heights_m,
                                                              defaults.layer_weights,
                                                              strict=True)) + ")")
    p.add_argument("--wind", type=_pairs, default=None, metavar="V:DEG,...",
                   help="physical: each layer's wind as speed_mps:direction_deg (default "
                   + ",".join(f"{v:g}:{d:g}" for v, d in zip(defaults.wind_mps,
                                                             defaults.wind_deg,
                                                             strict=True)) + ")")
    p.add_argument("--colour", action="store_true", help="RGB frames instead of mono")
    p.add_argument(
        "--fps",
        type=lambda t: _float(t, positive=True),
        default=DEFAULT_FPS,
        help=f"nominal frame rate for the timestamps (default {DEFAULT_FPS:g})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``live-stack simulate``; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    width, height = args.size
    start = time.perf_counter()
    physical_only = [name for name in ("d_r0", "electrons", "read_noise", "layers", "wind")
                     if getattr(args, name) is not None]
    if physical_only and args.seeing != PHYSICAL:
        print(f"{PROG}: error: --{physical_only[0].replace('_', '-')} needs --seeing "
              f"{PHYSICAL}", file=sys.stderr)
        return EXIT_USAGE
    try:
        seeing = _turbulence(args) if args.seeing == PHYSICAL else args.seeing
        info = simulate_capture(
            args.scene,
            frames=args.frames,
            out_dir=args.out,
            seed=args.seed,
            bits=args.bits,
            width=width,
            height=height,
            drift=args.drift,
            seeing=seeing,
            colour=args.colour,
            fps=args.fps,
        )
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{PROG}: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"wrote {info.frames} {info.width}x{info.height} {info.bits}-bit "
        f"{'RGB' if info.colour else 'mono'} frames of {info.scene!r} to {info.video} "
        f"and the truth to {info.truth} in {elapsed:.1f} s"
    )
    return 0
