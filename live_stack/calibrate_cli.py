"""``live-stack master-dark`` and ``live-stack master-flat``: build calibration masters.

Each takes one video (SER, AVI, ...) or folder of frames and writes one 16-bit image
(TIFF, PNG or FITS by the extension of ``-o``) with the master's kind, size, layout and
frame count recorded in it; ``reprocess --dark/--flat`` and the daemon's configuration
take these files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from live_stack import __version__
from live_stack.calibrate import COMBINE_METHODS, Master, MasterParams, master_dark, master_flat

OUTPUT_SUFFIXES = (".tif", ".tiff", ".png", ".fits", ".fit", ".fts")


def _parser(kind: str) -> argparse.ArgumentParser:
    what = {"dark": "frames taken with the sensor covered, at the capture's exposure and gain",
            "flat": "frames of an evenly lit field through the same optics"}[kind]
    p = argparse.ArgumentParser(prog=f"live-stack master-{kind}",
                                description=f"Combine {what} into a master {kind}.")
    p.add_argument("input", metavar="INPUT", help="a video file or a folder of frames")
    p.add_argument("-o", "--output", metavar="PATH",
                   help=f"output image (.tif, .png or .fits); default: INPUT_{kind}.tif beside "
                        "the input")
    defaults = MasterParams()
    p.add_argument("--method", choices=COMBINE_METHODS, default=defaults.method,
                   help=f"how frames are combined per pixel (default: {defaults.method})")
    p.add_argument("--max-frames", type=int, default=defaults.max_frames, metavar="N",
                   help=f"combine at most N frames, evenly spread (default: "
                        f"{defaults.max_frames})")
    if kind == "flat":
        p.add_argument("--dark", metavar="FILE",
                       help="master dark of the flat frames (their exposure), subtracted")
    return p


def _output_path(src: str, output: str | None, kind: str) -> Path:
    if output is None:
        p = Path(src.rstrip("/\\"))
        return p.resolve().parent / f"{p.stem if p.is_file() else p.name}_{kind}.tif"
    out = Path(output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o {output}: unknown image format {out.suffix!r}; use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    return out


def _run(kind: str, argv: Sequence[str] | None) -> int:
    from live_stack.io import open_source
    from live_stack.io.images import read_image, write_image

    prog = f"live-stack master-{kind}"
    args = _parser(kind).parse_args(argv)
    try:
        params = MasterParams(method=args.method, max_frames=args.max_frames)
        out = _output_path(args.input, args.output, kind)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with open_source(args.input) as src:
            if kind == "dark":
                master: Master = master_dark(src, params)
            else:
                dark = None
                if args.dark:
                    dark, meta = read_image(args.dark)
                    if meta.get("master", "dark") != "dark":
                        raise ValueError(f"{args.dark}: this is a master {meta['master']}, "
                                         "not a dark")
                master = master_flat(src, params, dark=dark)
        meta = dict(master.metadata, software=f"live-stack {__version__}")
        if kind == "flat" and args.dark:
            meta["dark"] = Path(args.dark).name
        write_image(out, master.image, metadata=meta)
    except (ValueError, OSError) as exc:
        text = str(exc)
        named = args.input in text or (kind == "flat" and args.dark and args.dark in text)
        print(f"{prog}: error: {text}" if named else f"{prog}: error: {args.input}: {text}",
              file=sys.stderr)
        return 1
    print(f"{args.input}: master {kind} of {master.frames} frames ({params.method}) -> {out}")
    return 0


def dark_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack master-dark``; returns the exit code."""
    return _run("dark", argv)


def flat_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack master-flat``; returns the exit code."""
    return _run("flat", argv)
