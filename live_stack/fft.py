"""Real 2-D Fourier transforms over the last two axes of a batch, as the pipeline uses
them.

The results are those of ``numpy.fft.rfft2`` and ``numpy.fft.irfft2`` (the same
half-spectrum layout, the inverse scaled by ``1 / (rows * columns)``), computed in the
input's precision: float32 gives complex64 and back. The work is done by ducc0's FFT,
which releases the GIL (the stacker's threads transform batches side by side) and
imports in a few milliseconds: SciPy's FFT, used before, cost about a quarter of a second
to import (most of it in its array-API layer), a sixth of a short ``reprocess`` run.
numpy's own FFT imports quickly too, but transforms batches of small patches 3 times
more slowly.
"""

from __future__ import annotations

import os

import ducc0
import numpy as np

__all__ = ["rfft2", "irfft2", "ALL_THREADS"]

#: ``threads`` value meaning one thread per CPU.
ALL_THREADS = -1

_REAL = (np.float32, np.float64)
_COMPLEX = (np.complex64, np.complex128)


def _nthreads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise ValueError(f"threads must be an integer, got {threads!r}")
    if threads == ALL_THREADS:
        return os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or ALL_THREADS ({ALL_THREADS}), got {threads}")
    return int(threads)


def rfft2(images: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Forward real transform over the last two axes.

    Parameters
    ----------
    images : numpy.ndarray
        Real ``(..., rows, columns)``; float32 or float64 (other dtypes are converted
        to float32).
    threads : int
        Threads of this one call (``ALL_THREADS``: one per CPU).

    Returns
    -------
    numpy.ndarray
        ``(..., rows, columns // 2 + 1)``, complex64 (complex128 for float64 input).
    """
    x = np.asarray(images)
    if x.ndim < 2:
        raise ValueError(f"images must have at least 2 dimensions, got shape {x.shape}")
    if x.dtype.type not in _REAL:
        x = x.astype(np.float32)
    return ducc0.fft.r2c(x, axes=(-2, -1), forward=True, nthreads=_nthreads(threads))


def irfft2(spectra: np.ndarray, shape: tuple[int, int], *, threads: int = 1) -> np.ndarray:
    """Inverse of :func:`rfft2`: real ``(..., rows, columns)`` from half-spectra.

    Parameters
    ----------
    spectra : numpy.ndarray
        Complex ``(..., rows, columns // 2 + 1)``; complex64 or complex128 (others are
        converted to complex64).
    shape : tuple of int
        ``(rows, columns)`` of the result (``columns`` is not implied by the half
        spectrum: it may be odd).
    threads : int
        As for :func:`rfft2`.

    Returns
    -------
    numpy.ndarray
        float32 (float64 for complex128 input), scaled by ``1 / (rows * columns)``.
    """
    s = np.asarray(spectra)
    rows, cols = (int(v) for v in shape)
    if s.ndim < 2 or s.shape[-2:] != (rows, cols // 2 + 1):
        raise ValueError(f"spectra must be (..., {rows}, {cols // 2 + 1}) for shape "
                         f"{(rows, cols)}, got {s.shape}")
    if s.dtype.type not in _COMPLEX:
        s = s.astype(np.complex64)
    return ducc0.fft.c2r(s, axes=(-2, -1), lastsize=cols, forward=False, inorm=2,
                         nthreads=_nthreads(threads))
