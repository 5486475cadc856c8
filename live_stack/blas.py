"""One thread for the BLAS library that numpy calls.

The phase correlation computes its search window with small matrix products
(:func:`live_stack.correlate.correlate_spectra`), one batch per call, from the
pipeline's own threads (:mod:`live_stack.parallel`). OpenBLAS, which numpy's wheels
bring, would start a pool of its own threads per core for them, and on this project's
2-core machines those threads and the pipeline's compete: one batch of 64 search
windows took 17.5 us per patch with OpenBLAS's threads and 11.9 us without, and two
pipeline threads at once 11.8 against 7.0 us per patch.

:func:`limit_blas_threads` is called once, by the ``live-stack`` entry point (as
:func:`live_stack.allocator.tune_allocator`): a process-wide setting belongs to the
program, not to the library. It leaves the user's own choice alone.
"""

from __future__ import annotations

import os

__all__ = ["limit_blas_threads"]

#: Environment variables through which users set the BLAS threads themselves: if any is
#: set, the user's choice stands.
ENV_SETTINGS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS")


def limit_blas_threads() -> bool:
    """Limit the BLAS libraries loaded by numpy to one thread each.

    Returns
    -------
    bool
        Whether the limit was applied (``False`` when one of :data:`ENV_SETTINGS` is set).
    """
    if any(name in os.environ for name in ENV_SETTINGS):
        return False
    import numpy  # noqa: F401  (loads the BLAS library the limit applies to)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    return True
