"""Which cached steps the predictor should run, gap by gap.

On a cached step `gap` steps after the last anchor, DisCa can run the predictor on the cache
or, as reuse does, send the cache through the head unchanged. The predictor is trained on
every gap at once, and on the shortest gaps the plain cache can be the closer of the two.
This measures both on the model's own all-full sampling runs over the calibration set:
for every anchor step a and later step s, both estimates of the velocity at s from the
cache of a, against the true velocity of the full DiT at s (relative MSE, averaged over
samples and anchor steps per gap). Where reuse comes out closer, the runtime reuses.
A predictor that reads the Taylor forecast (`PredictorConfig.forecast`) gets it from the
anchors a - gap and a (evenly spaced anchors; the cache of a alone when a < gap).
"""

from __future__ import annotations

import numpy as np

from disca.calibration.dataset import CalibrationSet
from disca.runtime.schedule import TaylorForecast, sigmas


def _rel_mse(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per sample: mean squared error / mean square of the truth."""
    axes = tuple(range(1, true.ndim))
    return ((est - true) ** 2).mean(axis=axes) / np.maximum((true**2).mean(axis=axes), 1e-12)


def gap_errors(backend, cal: CalibrationSet, *, steps: int, shift: float, batch: int = 8) -> list[dict]:
    """-> [{gap, predictor, reuse, pairs}] for gap = 1..steps-1: the mean relative velocity MSE of each
    estimate over `pairs` (sample, anchor step) pairs."""
    sig = sigmas(steps, shift).astype(np.float32)
    err = {g: {"predictor": 0.0, "reuse": 0.0, "taylor": 0.0, "pairs": 0} for g in range(1, steps)}
    for _, latents, texts in cal.batches(batch):
        n = len(latents)
        text = backend.asarray(texts)
        times = [backend.asarray(np.full(n, s, dtype=np.float32)) for s in sig]
        x = backend.asarray(latents)
        xs, caches, velocities = [], [], []
        for i in range(steps):
            u, cache = backend.full(x, times[i], times[i + 1], text)
            xs.append(x)  # a new array each step; the outputs get host copies: a backend may hand back
            caches.append(backend.to_numpy(cache).copy())  # the same buffer on every call (CUDA graphs)
            velocities.append(backend.to_numpy(u).copy())
            x = x + float(sig[i + 1] - sig[i]) * u
        for a in range(steps - 1):
            cache = backend.asarray(caches[a])
            for s in range(a + 1, steps):
                args = (xs[s], times[s], times[s + 1], text, cache)
                e = err[s - a]
                forecast = TaylorForecast(1)
                for anchor in (a - (s - a), a):
                    if anchor >= 0:
                        forecast.update(anchor, caches[anchor])
                forecast = backend.asarray(forecast(s))
                pred = backend.predict(*args[:4], forecast) if backend.forecast_input else backend.predict(*args)
                e["predictor"] += float(_rel_mse(backend.to_numpy(pred), velocities[s]).sum())
                e["taylor"] += float(_rel_mse(backend.to_numpy(backend.head(*args[:4], forecast)), velocities[s]).sum())
                e["reuse"] += float(_rel_mse(backend.to_numpy(backend.head(*args)), velocities[s]).sum())
                e["pairs"] += n
    keys = ("predictor", "reuse", "taylor")
    return [{"gap": g, **{k: e[k] / e["pairs"] for k in keys}, "pairs": e["pairs"]} for g, e in err.items()]


def cached_steps_record(errors: list[dict], *, steps: int, shift: float, samples: int) -> dict:
    """The manifest's `cached_steps` record: the gaps where reuse is closer than the predictor, and the
    measured errors behind the choice."""
    reuse = [e["gap"] for e in errors if _best(e) == "reuse"]
    taylor = [e["gap"] for e in errors if _best(e) == "taylor"]
    rounded = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in e.items()} for e in errors]
    record = {"steps": steps, "shift": shift, "samples": samples, "reuse_gaps": reuse, "errors": rounded}
    return record | {"taylor_gaps": taylor}


def _best(e: dict) -> str:
    """What a cached step at this gap runs: the closest estimate (ties to the predictor, then reuse);
    records without the forecast's error (older bundles) choose between predictor and reuse."""
    options = [k for k in ("predictor", "reuse", "taylor") if k in e]
    return min(options, key=lambda k: e[k])


def markdown_table(errors: list[dict]) -> str:
    lines = ["| gap | velocity rel. MSE, predictor | reuse | TaylorSeer-1 | runs |", "|---|---|---|---|---|"]
    for e in errors:
        taylor = f"{e['taylor']:.5f}" if "taylor" in e else "-"
        lines.append(f"| {e['gap']} | {e['predictor']:.5f} | {e['reuse']:.5f} | {taylor} | {_best(e)} |")
    return "\n".join(lines)
