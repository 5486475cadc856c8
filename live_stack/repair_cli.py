"""``live-stack repair FILE.ser ...``: make crash-cut SER recordings valid for every reader.

A capture program killed mid-recording leaves a SER file whose header says 0 frames or
more frames than the file holds. ``reprocess`` and the daemon's sources read such a file's
complete frames as it is (and say so); this command rewrites the header so that every
other program reads it too (see :func:`live_stack.io.ser.repair_header`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "live-stack repair"


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Rewrite the header of crash-cut SER files: FrameCount becomes the "
        "number of complete frames, and the bytes of an incomplete last frame are cut off. "
        "Intact files are not changed.",
    )
    p.add_argument("files", nargs="+", metavar="FILE.ser", help="SER files to repair in place")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack repair``; 0 if every file is valid afterwards, else 1."""
    from live_stack.io import SourceError
    from live_stack.io.ser import repair_header

    args = parser().parse_args(argv)
    failures = 0
    for path in args.files:
        try:
            print(repair_header(path))
        except SourceError as exc:
            failures += 1
            print(f"{PROG}: error: {exc}", file=sys.stderr)
    return 1 if failures else 0
