"""Make clean clips look like generated ones (slightly blurred, noisy) to test the evaluator's robustness."""

from __future__ import annotations

import numpy as np


def box_blur(clips: np.ndarray) -> np.ndarray:
    """A 3x3 box blur over the last two axes (each frame); edges are replicated so borders keep their colour."""
    padded = np.pad(clips, [(0, 0)] * (clips.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = clips.shape[-2:]
    total = sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3))
    return total / 9.0


def degrade(clips: np.ndarray, rng: np.random.Generator, noise_std: float = 0.1, blur: bool = True) -> np.ndarray:
    """Clips (..., H, W) in [-1, 1], box-blurred per frame, plus Gaussian noise, clipped back to [-1, 1]."""
    out = np.asarray(clips, dtype=np.float64)
    if blur:
        out = box_blur(out)
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
