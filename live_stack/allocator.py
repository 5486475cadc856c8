"""Tuning of the C allocator for the pipeline's pattern of allocations.

The pipeline allocates and frees the same large temporaries (batches of patch spectra,
blurred and downsampled frames: a few MB each) thousands of times a second, from two
threads. With glibc's defaults, each free of the topmost block hands the memory back to
the kernel and the next allocation faults it in again, page by page: on the 2000-frame
640x480 benchmark the process spent 2.9 s of system time on that churn against 4.8 s of
user time (1.1 million minor page faults). Keeping some free memory at the top of each
heap (``M_TOP_PAD``, ``M_TRIM_THRESHOLD``) removes the churn (60,000 faults, 0.6 s) for
about 15 MB of resident memory more (measured in BENCHMARKS.md).

Three settings, together: any ``mallopt`` call turns off glibc's dynamic mmap threshold,
so the threshold is set as well (else every block above 128 KiB would be mapped and
faulted in afresh on each allocation), and the trim threshold is kept above the pad.

:func:`tune_allocator` is called once, by the ``live-stack`` entry point, before any work:
a process-wide setting belongs to the program, not to the library. It does nothing
outside glibc (``mallopt`` is glibc's), or when the user set any of :data:`ENV_SETTINGS`.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_allocator"]

#: ``mallopt`` parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: Free memory kept at the top of each heap when it grows or shrinks.
TOP_PAD_BYTES = 16 << 20
#: Blocks from this size up are mapped on their own (and unmapped when freed): the
#: largest value glibc takes on 64-bit systems (half its 64 MiB heap size).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the top of a heap beyond which it is returned to the system. Minor page
#: faults of the 2000-frame 640x480 reprocess, by (mmap threshold, trim threshold, top
#: pad) in MiB: glibc's defaults 1,140,000; (32, 128, 64) 60,400; (32, 32, 16) 60,300;
#: (32, 16, 8) 145,000; each heap (one per thread) may keep up to the trim threshold.
TRIM_THRESHOLD_BYTES = 32 << 20
#: Environment variables through which glibc users set these themselves: if any is set,
#: the user's choice stands and nothing is changed.
ENV_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Set glibc malloc's top pad, mmap threshold and trim threshold for this process.

    Returns
    -------
    bool
        Whether the settings were applied (``False`` on a C library other than glibc, or
        when one of :data:`ENV_SETTINGS` is set in the environment).
    """
    if any(name in os.environ for name in ENV_SETTINGS) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only; musl has a mallopt that ignores this)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES))
    return all([bool(mallopt(param, value)) for param, value in settings])
