"""TeaCache's rescaling polynomial, fitted on the model's own sampling runs.

TeaCache skips a step while the accumulated change of the trunk's output, estimated from the change
of block 0's modulated input (cheap: the probe graph), stays under a threshold. The estimate is a
polynomial of the input change, fitted here by least squares (degree 4, as in the reference) on
consecutive steps of all-full runs through the bundle's own graphs, and stored in the manifest.
"""

from __future__ import annotations

import numpy as np

from disca.bundle import Bundle
from disca.calibration.dataset import CalibrationSet, calibration_set, task_prompts, uses_task_vocabulary
from disca.engines import write_manifest
from disca.errors import ConfigError
from disca.runtime.schedule import rel_l1, sigmas


def change_pairs(backend, cal: CalibrationSet, *, steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (input change, output change) of every pair of consecutive steps of all-full runs: the relative L1
    change of block 0's modulated input, and of the trunk's residual (final hidden state - its input)."""
    sig = sigmas(steps, shift).astype(np.float32)
    xs, ys = [], []
    for i in range(len(cal)):
        x, text = backend.asarray(cal.noise[i : i + 1]), backend.asarray(cal.texts[i][None])
        previous = None
        for k in range(steps):
            t, r = (backend.asarray(np.full(1, s, np.float32)) for s in (sig[k], sig[k + 1]))
            tokens, modulated = backend.first(x, t, r, text)[:2]
            u, hidden = backend.full(x, t, r, text)
            modulated, residual = backend.to_numpy(modulated), backend.to_numpy(hidden) - backend.to_numpy(tokens)
            if previous is not None:
                xs.append(rel_l1(modulated, previous[0]))
                ys.append(rel_l1(residual, previous[1]))
            previous = modulated, residual
            x = x + float(sig[k + 1] - sig[k]) * u
    return np.asarray(xs), np.asarray(ys)


def fit_teacache(backend, cal: CalibrationSet, *, steps: int, shift: float, degree: int = 4) -> dict:
    """The manifest's `teacache` record: polynomial coefficients (highest power first, numpy.polyval order)."""
    xs, ys = change_pairs(backend, cal, steps=steps, shift=shift)
    if len(xs) <= degree:
        raise ConfigError(f"{len(xs)} step pairs cannot fit a degree-{degree} polynomial: use more samples or steps")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ConfigError("the model produced non-finite changes between steps: the bundle cannot be fitted")
    degenerate = len(np.unique(xs)) <= degree  # e.g. an untrained model whose output is constant
    # Degenerate data cannot determine the polynomial: the identity (the raw input change) stands in.
    coefficients = np.array([1.0, 0.0]) if degenerate else np.polyfit(xs, ys, degree)
    grid = np.polyval(coefficients, np.linspace(xs.min(), xs.max(), 256))
    if not degenerate and grid.min() < 0:
        # TeaCache accumulates the rescaled change, clamped at zero: a curve below zero on its own data counts
        # those changes as none and skips the steps that most need computing (an overfit: few points, high degree)
        raise ConfigError(
            f"the degree-{degree} fit on {len(xs)} step pairs goes negative on its own input range "
            f"({grid.min():.3g}): use a lower --degree or more --samples"
        )
    fitted = np.polyval(coefficients, xs)
    return {
        "coefficients": [float(c) for c in coefficients],
        "degree": 1 if degenerate else degree,
        "degenerate": bool(degenerate),
        "input": "relative L1 change of block 0's modulated input between consecutive steps",
        "output": "relative L1 change of the trunk residual (hidden - tokens) between consecutive steps",
        "samples": len(cal),
        "steps": steps,
        "shift": shift,
        "points": len(xs),
        "input_range": [float(xs.min()), float(xs.max())],
        "mean_abs_error": float(np.abs(fitted - ys).mean()),
        "mean_output": float(ys.mean()),
    }


def default_set(bundle: Bundle, n: int, seed: int = 0) -> CalibrationSet | None:
    """Task prompts for a bundle trained on disca's task or without a vocabulary (hashed words); None for a
    bundle with its own vocabulary (its prompts must come from the user)."""
    if uses_task_vocabulary(bundle):
        return calibration_set(bundle, n=n, seed=seed)
    if not bundle.manifest.get("text"):
        return calibration_set(bundle, prompts=task_prompts(n, seed), n=n, seed=seed)
    return None


def calibrate_teacache(bundle: Bundle, backend, cal: CalibrationSet, degree: int = 4) -> dict:
    """Fit on `cal` with the bundle's default steps / shift and write the record into its manifest."""
    schedule = bundle.schedule
    record = fit_teacache(backend, cal, steps=schedule.steps, shift=schedule.shift, degree=degree)
    bundle.manifest["teacache"] = record
    write_manifest(bundle)
    return record
