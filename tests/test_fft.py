"""live_stack.fft against SciPy's FFT (an independent implementation), its dtype policy,
its errors, and that the pipeline no longer pulls SciPy in."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.fft as sfft

from live_stack.fft import ALL_THREADS, irfft2, rfft2


@pytest.mark.parametrize("shape", [(5, 80, 80), (3, 2, 64, 64), (40, 33), (2, 17, 30)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_scipy_and_round_trips(shape, dtype) -> None:
    x = np.random.default_rng(3).normal(size=shape).astype(dtype)
    spec = rfft2(x)
    assert spec.dtype == (np.complex64 if dtype == np.float32 else np.complex128)
    expected = sfft.rfft2(x.astype(np.float64))
    assert spec.shape == expected.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(expected).max()
    np.testing.assert_allclose(spec, expected, atol=tol * scale)
    back = irfft2(spec, shape[-2:])
    assert back.dtype == dtype and back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=tol * np.abs(x).max() * 10)
    np.testing.assert_allclose(irfft2(expected, shape[-2:]),
                               sfft.irfft2(expected, s=shape[-2:]), atol=1e-12 * scale)


def test_threads_change_nothing() -> None:
    x = np.random.default_rng(4).random((64, 80, 80), dtype=np.float32)
    one = rfft2(x)
    np.testing.assert_array_equal(rfft2(x, threads=2), one)
    np.testing.assert_array_equal(irfft2(one, (80, 80), threads=ALL_THREADS),
                                  irfft2(one, (80, 80)))


def test_other_dtypes_are_converted() -> None:
    x = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert rfft2(x).dtype == np.complex64
    np.testing.assert_allclose(irfft2(rfft2(x), (8, 8)), x, atol=1e-4)


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_bad_threads_are_named(threads) -> None:
    with pytest.raises(ValueError, match="threads"):
        rfft2(np.zeros((8, 8), np.float32), threads=threads)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="images"):
        rfft2(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"spectra must be \(\.\.\., 8, 5\)"):
        irfft2(np.zeros((8, 4), np.complex64), (8, 8))


def test_the_pipeline_does_not_import_scipy(sim_capture, tmp_path) -> None:
    """SciPy's FFT took a quarter of a second to import: ``reprocess`` and the live
    stacker run without it."""
    video = sim_capture("moon").info.video
    code = (
        "import sys\n"
        "from live_stack.cli import main\n"
        "from live_stack.io import open_source\n"
        "from live_stack.live import LiveParams, LiveStacker\n"
        f"assert main(['reprocess', {str(video)!r}, '-o', {str(tmp_path / 'a.tif')!r}, "
        "'-q']) == 0\n"
        f"src = open_source({str(video)!r})\n"
        "st = LiveStacker(LiveParams(warmup=10, buffer_size=30))\n"
        "st.add_batch([src[i] for i in range(len(src))])\n"
        "assert st.snapshot() is not None\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if 'scipy' in m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
