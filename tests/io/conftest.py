"""Shared fixtures for the frame-source and image-file tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

#: Relative noise added to the synthetic images (a fraction of full scale).
NOISE = 0.003


def smooth_image(height: int, width: int, *, top: int, seed: int = 0) -> np.ndarray:
    """A lunar-looking test image: a lit limb, a few soft craters, a little noise.

    Returns float64 values in ``[0, top]`` (round and cast as needed). Neighbouring pixels
    differ little, as in a real capture, which the SER byte-order detection relies on.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 0.25 + 0.5 * np.exp(
        -(
            ((x - 0.6 * width) ** 2 + (y - 0.4 * height) ** 2)
            / (2 * (0.45 * max(height, width)) ** 2)
        )
    )
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(2, max(3.0, min(height, width) / 5))
        img -= 0.15 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += 0.08 * np.exp(-((x - cx - r / 3) ** 2 + (y - cy) ** 2) / (2 * (r / 2) ** 2))
    img += rng.normal(0, NOISE, img.shape)
    return np.clip(img, 0, 1) * top


@pytest.fixture
def make_frames() -> Callable[..., np.ndarray]:
    """Factory: ``make_frames(n, height, width, *, layout, bit_depth, seed)``.

    Returns an ``(n, H, W)`` or ``(n, H, W, 3)`` array of distinct smooth frames in the
    dtype a ``bit_depth`` SER file holds (uint8 for 8, uint16 otherwise).
    """

    def make(
        n: int, height: int, width: int, *, layout: str = "mono", bit_depth: int = 8, seed: int = 0
    ) -> np.ndarray:
        dtype = np.uint8 if bit_depth <= 8 else np.uint16
        top = (1 << bit_depth) - 1
        frames = []
        for k in range(n):
            planes = [
                smooth_image(height, width, top=top, seed=seed + 7 * k + c)
                for c in range(3 if layout == "rgb" else 1)
            ]
            f = np.stack(planes, axis=-1) if layout == "rgb" else planes[0]
            frames.append(np.round(f).astype(dtype))
        return np.stack(frames)

    return make
