"""Quality metrics between videos in [-1, 1] (numpy only)."""

from __future__ import annotations

import math

import numpy as np

from disca.errors import InputError


def _pair(a, b, data_range, least_ndim: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two real arrays of one shape, as float64: numpy would broadcast (1, ...) against (2, ...) into a wrong figure."""
    out = []
    for name, x in (("a", a), ("b", b)):
        x = np.asarray(x)
        if x.dtype.kind not in "fiu" or x.ndim < least_ndim or x.size == 0:
            raise InputError(f"{name} must be a non-empty real array of {least_ndim}+ dims, got {x.dtype} {x.shape}")
        out.append(x.astype(np.float64))
    if out[0].shape != out[1].shape:
        raise InputError(f"the two videos differ in shape: {out[0].shape} and {out[1].shape}")
    if isinstance(data_range, bool) or not isinstance(data_range, int | float) or not (0 < data_range < math.inf):
        raise InputError(f"data_range must be a positive number, got {data_range!r}")
    return out[0], out[1]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over whole arrays of one shape (inf when equal)."""
    a, b = _pair(a, b, data_range)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0, window: int = 7) -> float:
    """Mean SSIM over frames and channels, with a uniform window (videos (..., H, W) of one shape)."""
    a, b = _pair(a, b, data_range, least_ndim=2)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= min(a.shape[-2:]):
        raise InputError(f"window must be an integer from 1 to the frame size {a.shape[-2:]}, got {window!r}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x):
        from numpy.lib.stride_tricks import sliding_window_view

        return sliding_window_view(x, (window, window), axis=(-2, -1)).mean(axis=(-2, -1))

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
