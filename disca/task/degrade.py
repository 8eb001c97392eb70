"""Make clean clips look like generated ones (slightly blurred, noisy) to test the evaluator's robustness."""

from __future__ import annotations

import math

import numpy as np

from disca.errors import InputError


def box_blur(clips: np.ndarray) -> np.ndarray:
    """A 3x3 box blur over the last two axes (each frame); edges are replicated so borders keep their colour."""
    padded = np.pad(clips, [(0, 0)] * (clips.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = clips.shape[-2:]
    total = sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3))
    return total / 9.0


def degrade(clips: np.ndarray, rng: np.random.Generator, noise_std: float = 0.1, blur: bool = True) -> np.ndarray:
    """Clips (..., H, W) in [-1, 1], box-blurred per frame, plus Gaussian noise, clipped back to [-1, 1]."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, int | float) or not 0 <= noise_std < math.inf:
        raise InputError(f"noise_std must be a finite number >= 0, got {noise_std!r}")  # nan would add no noise
    out = np.asarray(clips, dtype=np.float64)
    if blur:
        out = box_blur(out)
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
