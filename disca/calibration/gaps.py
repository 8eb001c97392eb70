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


def cached_steps_record(
    errors: list[dict], *, steps: int, shift: float, samples: int, choice=None, trials=None, control=None
) -> dict:
    """The manifest's `cached_steps` record: the gaps where the head runs reuse or TaylorSeer-1 instead of the
    predictor (`choice` from `choose_on_runs`; without it, the closest one-step estimate), and the measured
    errors (and sampled-run trials) behind the choice. `control`: (choice, trials) of the training-free
    control, TaylorSeer-1 or reuse, chosen the same way (its reuse gaps: `forecast_reuse_gaps`)."""
    chosen_on = "runs" if choice is not None else "one-step"
    choice = choice if choice is not None else {e["gap"]: _best(e) for e in errors}
    rounded = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in e.items()} for e in errors]
    record = {"steps": steps, "shift": shift, "samples": samples, "reuse_gaps": gaps_of(choice, "reuse")}
    record |= {"errors": rounded, "taylor_gaps": gaps_of(choice, "taylor"), "chosen_on": chosen_on}
    record |= {"trials": trials} if trials else {}
    if control is not None:
        record |= {"forecast_reuse_gaps": gaps_of(control[0], "reuse"), "forecast_trials": control[1]}
    return record


ESTIMATES = ("predictor", "reuse", "taylor")  # what a cached step can run, in the order ties go


def _best(e: dict) -> str:
    """What a cached step at this gap runs: the closest estimate (ties to the predictor, then reuse);
    records without the forecast's error (older bundles) choose between predictor and reuse."""
    options = [k for k in ESTIMATES if k in e]
    return min(options, key=lambda k: e[k])


def markdown_table(errors: list[dict], record: dict | None = None) -> str:
    """The one-step errors, gap by gap, and what each gap runs (the record's choice, else the closest)."""
    runs = {}
    if record is not None:
        runs = {g: "reuse" for g in record.get("reuse_gaps", [])} | {g: "taylor" for g in record.get("taylor_gaps", [])}
    lines = ["| gap | velocity rel. MSE, predictor | reuse | TaylorSeer-1 | runs |", "|---|---|---|---|---|"]
    for e in errors:
        taylor = f"{e['taylor']:.5f}" if "taylor" in e else "-"
        chosen = runs.get(e["gap"], "predictor") if record is not None else _best(e)
        lines.append(f"| {e['gap']} | {e['predictor']:.5f} | {e['reuse']:.5f} | {taylor} | {chosen} |")
    return "\n".join(lines)


def cached_gaps(anchors, steps: int) -> set[int]:
    """The gaps (steps since the last anchor) a DisCa run over `anchors` of `steps` takes."""
    out, last = set(), 0
    for s in range(steps):
        if s in anchors:
            last = s
        else:
            out.add(s - last)
    return out


def choose_on_runs(quality, errors: list[dict], probe_lists, *, steps: int, options=ESTIMATES, log=lambda m: None):
    """The per-gap choice made on sampled runs. The one-step errors above measure each estimate right
    after an anchor, with the forecast's two anchors `gap` steps apart; along a DisCa run the errors of
    earlier cached steps carry on and the two anchors are as far apart as the list has them, so the
    estimate with the larger one-step error can end closer to all-full. Starting from the one-step
    choice, each gap the `probe_lists` take (shortest first) tries the other estimates and keeps a change
    when the mean PSNR of the DisCa runs over the probe lists (`quality(anchors, reuse_gaps, taylor_gaps)`
    -> dB) rises by more than 0.01 dB. Each trial reruns only the lists that take its gap. `options`: the
    estimates to choose from (reuse and TaylorSeer-1 only: the training-free control, `taylorseer1-gaps`).
    -> (choice {gap: estimate}, [{gap, estimate, psnr_db}] of every trial)."""
    options = [k for k in options if all(k in e for e in errors)]
    choice = {e["gap"]: min(options, key=lambda k: e[k]) for e in errors}

    taken = {tuple(a): cached_gaps(a, steps) for a in probe_lists}
    runs = {}  # a run depends on the choice at the gaps its list takes only: a trial reruns the lists it changes

    def score(ch) -> float:
        dbs = []
        for anchors, gaps in taken.items():
            reuse, taylor = (tuple(g for g in gaps_of(ch, k) if g in gaps) for k in ("reuse", "taylor"))
            if (anchors, reuse, taylor) not in runs:
                runs[anchors, reuse, taylor] = quality(list(anchors), list(reuse), list(taylor))
            dbs.append(runs[anchors, reuse, taylor])
        return float(np.mean(dbs))

    best = score(choice)
    trials = [{"gap": None, "estimate": "one-step choice", "psnr_db": round(best, 3)}]
    log(f"  one-step choice: {best:.2f} dB, mean over {len(probe_lists)} lists")
    for g in sorted(set().union(*(cached_gaps(a, steps) for a in probe_lists)) & choice.keys()):
        for option in [k for k in options if k != choice[g]]:
            db = score(choice | {g: option})
            trials.append({"gap": g, "estimate": option, "psnr_db": round(db, 3)})
            log(f"  gap {g:2d} {option:9s} {db:6.2f} dB" + ("  (kept)" if db > best + 0.01 else ""))
            if db > best + 0.01:
                best, choice = db, choice | {g: option}
    return choice, trials


def gaps_of(choice: dict, estimate: str) -> list[int]:
    return sorted(g for g, c in choice.items() if c == estimate)
