"""Sampling schedule: flow-matching sigmas, and the policy that picks full vs cached steps."""

from __future__ import annotations

import numpy as np

from disca.bundle import Schedule
from disca.errors import ScheduleError
from disca.manifest import MAX_STEPS

# The official DisCa T2V anchor lists for 20 steps (8 and 10 anchors).
OFFICIAL_ANCHORS = {(20, 8): [0, 1, 2, 5, 9, 13, 17, 19], (20, 10): [0, 1, 2, 5, 9, 11, 13, 15, 17, 19]}
DEFAULT_SCHEDULE = Schedule(steps=20, shift=5.0, anchors=OFFICIAL_ANCHORS[(20, 8)])


def sigmas(steps: int, shift: float) -> np.ndarray:
    """steps + 1 noise levels from 1 (noise) to 0 (data), shifted as s*sigma / (1 + (s-1)*sigma)."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 1 <= steps <= MAX_STEPS:
        raise ScheduleError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, int | float | np.floating) or not shift > 0:
        raise ScheduleError(f"shift must be a number > 0, got {shift!r}")
    s = np.linspace(1.0, 0.0, steps + 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = shift * s / (1 + (shift - 1) * s)
    if not np.isfinite(out).all():  # a shift so small (or large) that 1 + (shift - 1) rounds to 0 (or overflows)
        raise ScheduleError(f"shift {shift} is outside what the sampler can represent: use a shift near 1..20")
    return out


def check_anchors(anchors, steps: int) -> list[int]:
    """Sorted, unique, within 0..steps-1, and step 0 an anchor (there is no cache before it)."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(anchors, str) or not hasattr(anchors, "__iter__"):
        raise ScheduleError(f"anchors must be a list of step numbers, got {anchors!r}")
    anchors = list(anchors)
    if not anchors:
        raise ScheduleError("the anchor schedule is empty; step 0 at least must be an anchor")
    if any(isinstance(a, bool) or not isinstance(a, int | np.integer) for a in anchors):
        raise ScheduleError(f"anchor steps must be integers, got {anchors}")
    if anchors != sorted(set(anchors)):
        raise ScheduleError(f"anchor steps must be sorted and unique, got {anchors}")
    if anchors[0] != 0:
        raise ScheduleError(f"step 0 must be an anchor (there is no cache before it), got {anchors}")
    if anchors[-1] >= steps:
        raise ScheduleError(f"anchor step {anchors[-1]} is out of range for {steps} steps (0..{steps - 1})")
    return [int(a) for a in anchors]


def uniform_anchors(steps: int, k: int) -> list[int]:
    """k anchors spread evenly over the steps, step 0 first."""
    return sorted({int(round(i * steps / k)) for i in range(k)})


def budget_anchors(manifest: dict, steps: int, k: int) -> tuple[list[int], str]:
    """The best-known list of k anchors for a bundle -> (anchors, where it comes from): the list searched
    for this model (`disca-export schedule`, stored as `anchor_lists`), else the default schedule when it
    has k anchors, else the official DisCa list, else uniform spacing."""
    if not 1 <= k <= steps:
        raise ScheduleError(f"an anchor budget must be between 1 and {steps} steps, got {k}")
    searched = manifest.get("anchor_lists") or {}
    if searched.get("steps") == steps and str(k) in searched.get("lists", {}):
        return [int(a) for a in searched["lists"][str(k)]], "searched"
    default = manifest["schedule"]
    if int(default["steps"]) == steps and len(default["anchors"]) == k:
        return [int(a) for a in default["anchors"]], "default"
    if (steps, k) in OFFICIAL_ANCHORS:
        return list(OFFICIAL_ANCHORS[(steps, k)]), "official"
    return uniform_anchors(steps, k), "uniform"


def _cached_steps(manifest: dict, steps: int, shift: float | None) -> dict:
    """The bundle's `cached_steps` calibration (`disca-export schedule`) if it was made for this sampling grid,
    else {} (on another grid a gap is a different stretch of noise levels)."""
    record = manifest.get("cached_steps") or {}
    same_grid = record.get("steps") == steps and (shift is None or record.get("shift") in (None, shift))
    return record if same_grid else {}


def calibrated_reuse_gaps(manifest: dict, steps: int, shift: float | None = None) -> list[int]:
    """The gaps where DisCa reuses the cache (`DiscaPolicy.reuse_gaps`), as calibrated for this bundle at
    `steps` steps and `shift`; none when calibrated for another grid, or not at all."""
    return [int(g) for g in _cached_steps(manifest, steps, shift).get("reuse_gaps", [])]


def calibrated_taylor_gaps(manifest: dict, steps: int, shift: float | None = None) -> list[int]:
    """The gaps where DisCa runs TaylorSeer's forecast through the head (`DiscaPolicy.taylor_gaps`),
    calibrated as `calibrated_reuse_gaps` (absent in older bundles: none)."""
    return [int(g) for g in _cached_steps(manifest, steps, shift).get("taylor_gaps", [])]


def calibrated_forecast_reuse_gaps(manifest: dict, steps: int, shift: float | None = None) -> list[int]:
    """The training-free counterpart of `calibrated_reuse_gaps`: the gaps where, in the same calibration, the
    plain cache came closer than TaylorSeer-1's forecast (chosen on sampled runs where the record has it, else
    on the one-step errors); the predictor plays no part."""
    record = _cached_steps(manifest, steps, shift)
    if "forecast_reuse_gaps" in record:
        return [int(g) for g in record["forecast_reuse_gaps"]]
    errors = record.get("errors", [])
    return [int(e["gap"]) for e in errors if "taylor" in e and e["reuse"] < e["taylor"]]


def parse_anchors(text: str) -> list[int]:
    """'0,1,2,5' -> [0, 1, 2, 5]"""
    items = [x.strip() for x in text.split(",") if x.strip()] if isinstance(text, str) else None
    if items is None or not all(x.isascii() and x.isdigit() for x in items):  # int() would take "1_0" and "٣"
        shown = repr(text) if len(repr(text)) <= 60 else repr(text)[:57] + "..."
        raise ScheduleError(f"schedule must be comma-separated step numbers like 0,1,2,5,9, got {shown}")
    return [int(x) for x in items]


class Policy:
    """Step by step: run the full DiT (refresh the cache), or a cheap cached step.

    Decision and math are separate (as diffusers' cache hooks): `is_full` decides, and
    `observe` (after a full step) / `cached_velocity` (on a cached step) do the math.
    """

    name = "base"
    cached_graph = "predictor"  # the graph a cached step runs (for the statistics)
    probe = False  # True: the sampler runs the probe graph (`first`) before each step and passes its outputs

    def reset(self, steps: int) -> None:
        self.steps = steps

    def is_full(self, step: int, probe=None) -> bool:
        raise NotImplementedError

    def full_step(self, backend, x, t, r, text, probe=None):
        """A full step -> (velocity, cache): the full graph (DBCache continues from its probe instead)."""
        return backend.full(x, t, r, text)

    def observe(self, backend, step: int, sigma: float, cache) -> None:
        """Called after each full step with its cache."""

    def cached_graph_at(self, step: int) -> str:
        """The graph that cached step `step` runs (for the statistics)."""
        return self.cached_graph

    def cached_velocity(self, backend, step: int, sigma: float, x, t, r, text, cache):
        return backend.predict(x, t, r, text, cache)


class FullPolicy(Policy):
    """Every step runs the full DiT (the quality reference)."""

    name = "full"

    def is_full(self, step: int, probe=None) -> bool:
        return True


class AnchorPolicy(Policy):
    """Anchor steps (a fixed list) run the full DiT; the policy's math fills the others."""

    def __init__(self, anchors):
        self.anchors = list(anchors)

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self._anchors = set(check_anchors(self.anchors, steps))

    def is_full(self, step: int, probe=None) -> bool:
        return step in self._anchors


class TaylorForecast:
    """TaylorSeer's forecast (Liu et al. 2025, as in its reference code and cache-dit / diffusers): at each full
    step the feature's finite differences are updated in STEP INDEX, dY[i+1] = (dY[i] - dY_prev[i]) / window
    (window = steps since the previous full step), and a later step k steps on reads
    sum_i dY[i] k^i / i!. Order 1 extrapolates linearly, order 2 quadratically; fewer full steps so far
    give a lower order."""

    def __init__(self, order: int):
        if order not in (1, 2):
            raise ScheduleError(f"taylorseer order must be 1 or 2, got {order}")
        self.order = order
        self.terms, self.step = [], None

    def update(self, step: int, feature) -> None:
        terms = [feature]
        for i in range(min(self.order, len(self.terms))):
            terms.append((terms[i] - self.terms[i]) / (step - self.step))
        self.terms, self.step = terms, step

    def __call__(self, step: int):
        k, out, fact = step - self.step, self.terms[0], 1.0
        for i, term in enumerate(self.terms[1:], start=1):
            fact *= i
            out = out + term * (k**i / fact)
        return out


class DiscaPolicy(AnchorPolicy):
    """DisCa: the learned predictor forecasts the hidden state from the cache and the current input.

    `reuse_gaps`: the gaps (steps since the last anchor) where the cache goes through the head unchanged
    instead, because on the model's calibration runs that came closer to the true velocity than the
    predictor did (`disca-export schedule` measures it, see `disca.calibration.gaps`). A head call is
    cheaper than a predictor call, so the fallback never costs time.
    `taylor_gaps`: likewise, the gaps where TaylorSeer's first-order forecast of the hidden state from the
    last two anchors (in step index) through the head came closest.
    """

    name = "disca"

    def __init__(self, anchors, reuse_gaps=(), taylor_gaps=()):
        super().__init__(anchors)
        self.reuse_gaps = frozenset(int(g) for g in reuse_gaps)
        self.taylor_gaps = frozenset(int(g) for g in taylor_gaps) - self.reuse_gaps

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.last_anchor = 0
        self.forecast = TaylorForecast(1)

    def observe(self, backend, step, sigma, cache) -> None:
        self.last_anchor = step
        if backend.forecast_input or self.taylor_gaps:  # a host copy: a backend may refill the same cache buffer
            self.forecast.update(step, backend.to_numpy(cache).copy())

    def predictor_input(self, backend, step: int, cache):
        """What the predictor reads as its cache: the anchor's hidden state, or (a predictor trained on it,
        `PredictorConfig.forecast`) TaylorSeer's first-order forecast from the last two anchors."""
        if not backend.forecast_input:
            return cache
        return backend.asarray(self.forecast(step))

    def cached_graph_at(self, step: int) -> str:
        gap = step - self.last_anchor
        return "head" if gap in self.reuse_gaps or gap in self.taylor_gaps else "predictor"

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        gap = step - self.last_anchor
        if gap in self.taylor_gaps:
            return backend.head(x, t, r, text, backend.asarray(self.forecast(step)))
        if gap in self.reuse_gaps:
            return backend.head(x, t, r, text, cache)
        return backend.predict(x, t, r, text, self.predictor_input(backend, step, cache))


class DiscaPredictorPolicy(DiscaPolicy):
    """The paper's DisCa: the predictor on every cached step, whatever the bundle calibrated."""

    name = "disca-predictor"

    def __init__(self, anchors):
        super().__init__(anchors)


class AdaptiveDiscaPolicy(DiscaPolicy):
    """DisCa with its anchors chosen online, per clip, at no extra cost: after each anchor the hidden
    state's relative speed, |h_a - h_prev| / |h_a| per step between the last two anchors (what the forecast
    extrapolates), is added up step by step, and the step where the sum reaches `threshold` runs the full
    DiT. Features that move fast get anchors close together; the first `warmup` steps are anchors, and at
    most `max_cached` steps in a row are cached (None: no cap). Cached steps run as `disca`'s."""

    name = "disca-adaptive"

    def __init__(self, threshold: float, warmup: int = 2, max_cached: int | None = None, reuse_gaps=(), taylor_gaps=()):
        if not threshold > 0 or warmup < 1 or (max_cached is not None and max_cached < 1):
            raise ScheduleError(
                f"disca-adaptive needs threshold > 0, warmup >= 1, max_cached >= 1; got {threshold}, {warmup}, "
                f"{max_cached}"
            )
        super().__init__([0], reuse_gaps, taylor_gaps)
        self.threshold, self.warmup, self.max_cached = float(threshold), warmup, max_cached

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.speed, self.moved = None, 0.0

    def is_full(self, step: int, probe=None) -> bool:
        if step < self.warmup or self.speed is None:
            return True
        self.moved += self.speed
        capped = self.max_cached is not None and step - self.last_anchor > self.max_cached
        return capped or self.moved >= self.threshold

    def observe(self, backend, step, sigma, cache) -> None:
        self.last_anchor, self.moved = step, 0.0
        self.forecast.update(step, backend.to_numpy(cache).copy())
        if len(self.forecast.terms) > 1:
            value, slope = self.forecast.terms[:2]
            self.speed = float(np.linalg.norm(slope) / max(np.linalg.norm(value), 1e-12))


class ReusePolicy(AnchorPolicy):
    """FORA-style: the last anchor's hidden state, unchanged, through the DiT's head (the degenerate predictor)."""

    name = "reuse"
    cached_graph = "head"

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        return backend.head(x, t, r, text, cache)


class TaylorSeerPolicy(AnchorPolicy):
    """TaylorSeer on the anchors: the DiT's final hidden state forecast from its values at the anchors
    (`TaylorForecast`, in step index), then the DiT's head. The published method caches every block's
    attention / MLP outputs; disca's graphs expose only the trunk's output, so this is its `hidden_states`
    form (cache-dit's `taylorseer_cache_type="hidden_states"`) on a fixed anchor list instead of a fixed interval."""

    cached_graph = "head"

    def __init__(self, anchors, order: int = 1):
        super().__init__(anchors)
        TaylorForecast(order)  # checks the order
        self.order = order
        self.name = f"taylorseer{order}"

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.forecast = TaylorForecast(self.order)

    def observe(self, backend, step, sigma, cache) -> None:
        self.forecast.update(step, backend.to_numpy(cache).astype(np.float64))

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        return backend.head(x, t, r, text, backend.asarray(self.forecast(step).astype(np.float32)))


class TaylorSeerGapsPolicy(TaylorSeerPolicy):
    """The training-free control of DisCa's per-gap choice: TaylorSeer-1 on the anchors, except the plain
    cache through the head on `reuse_gaps` (`calibrated_forecast_reuse_gaps`: where the bundle's calibration
    found it closer than the forecast). Against `disca` on the same anchors it isolates what the learned
    predictor adds."""

    def __init__(self, anchors, reuse_gaps=()):
        super().__init__(anchors, order=1)
        self.name = "taylorseer1-gaps"
        self.reuse_gaps = frozenset(int(g) for g in reuse_gaps)

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.last_anchor = 0

    def observe(self, backend, step, sigma, cache) -> None:
        self.last_anchor = step
        super().observe(backend, step, sigma, cache)

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        if step - self.last_anchor in self.reuse_gaps:
            return backend.head(x, t, r, text, cache)
        return super().cached_velocity(backend, step, sigma, x, t, r, text, cache)


def rel_l1(a, b) -> float:
    """mean |a - b| / mean |b|: the threshold caches' change measure (numpy arrays or torch tensors)."""
    return float(abs(a - b).mean()) / max(float(abs(b).mean()), 1e-12)


class ThresholdPolicy(Policy):
    """A training-free cache that decides each step from the probe graph (embedders + block 0), skipping
    while a change measure stays under `threshold`. A skipped step adds the trunk's residual cached at the
    last full step to this step's `base` (tokens or block 0's output) and runs the head graph."""

    cached_graph = "head"
    probe = True

    def __init__(self, threshold: float):
        if not threshold > 0:
            raise ScheduleError(f"{self.name} needs a threshold > 0, got {threshold}")
        self.threshold = float(threshold)

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.base = self.residual = None

    def observe(self, backend, step, sigma, cache) -> None:
        self.residual = backend.values(cache) - self.base

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        return backend.head(x, t, r, text, self.base + self.residual)


class TeaCachePolicy(ThresholdPolicy):
    """TeaCache (Liu et al. 2025): accumulate the rescaled relative L1 change of block 0's modulated input
    between consecutive steps; skip while the sum stays under the threshold, run the DiT (and reset the sum)
    when it does not. The rescaling polynomial maps the input change to the trunk residual's change; it is
    fitted on the model's own sampling runs (`disca-export teacache`, stored in the manifest). As in the
    reference implementation, the first and the last step always run the DiT."""

    name = "teacache"

    def __init__(self, threshold: float, coefficients):
        super().__init__(threshold)
        if not coefficients:
            raise ScheduleError(
                "teacache needs the rescaling polynomial fitted on this model: run `disca-export teacache BUNDLE`"
            )
        self.poly = np.poly1d(np.asarray(coefficients, dtype=np.float64))

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.accumulated, self.previous = 0.0, None

    def is_full(self, step: int, probe=None) -> bool:
        tokens, modulated = probe[:2]
        full = self.previous is None or step == self.steps - 1
        if not full:
            self.accumulated += max(float(self.poly(rel_l1(modulated, self.previous))), 0.0)
            full = self.accumulated >= self.threshold
        if full:
            self.accumulated = 0.0
        self.previous, self.base = modulated, tokens
        return full


class FirstBlockPolicy(ThresholdPolicy):
    """First-Block-Cache (ParaAttention / cache-dit's DBCache F1B0): run block 0; skip the other blocks while
    its residual differs from the one of the last full step by less than the threshold (relative L1)."""

    name = "first-block"

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.reference = None

    def is_full(self, step: int, probe=None) -> bool:
        tokens, _, first = probe[:3]
        residual = first - tokens
        full = self.reference is None or rel_l1(residual, self.reference) >= self.threshold
        if full:
            self.reference = residual
        self.base = first
        return full


class DBCachePolicy(Policy):
    """DBCache F1B0 (cache-dit; First-Block-Cache of ParaAttention with its options): block 0 runs every step
    (the probe); the step is cached while block 0's residual differs from the one of the last full step by
    less than `threshold` (relative L1, as `first-block`), except in the first `warmup` steps and after
    `max_cached` cached steps in a row (None: no cap). A cached step adds the residual of blocks 1..N to block
    0's output: with `order` 1 / 2 that residual is TaylorSeer's forecast from the full steps' residuals
    (in step index, `TaylorForecast`), with order 0 the last one as it is. Nothing runs twice: a full step
    continues from the probe with the `rest` graph (blocks 1..N + head), a cached step runs the `tail` graph
    (the head on the probe's `vec`)."""

    cached_graph = "tail"
    probe = True

    def __init__(self, threshold: float, order: int = 1, warmup: int = 2, max_cached: int | None = 2):
        if not threshold > 0:
            raise ScheduleError(f"dbcache needs a threshold > 0, got {threshold}")
        if order not in (0, 1, 2) or warmup < 1 or (max_cached is not None and max_cached < 1):
            raise ScheduleError(
                f"dbcache needs order 0-2, warmup >= 1 and max_cached >= 1, got {order}, {warmup}, {max_cached}"
            )
        self.threshold, self.order, self.warmup, self.max_cached = float(threshold), order, warmup, max_cached
        self.name = f"dbcache-ts{order}" if order else "dbcache"

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self.reference = self.first = self.vec = None
        self.in_a_row = 0
        self.forecast = TaylorForecast(self.order) if self.order else None
        self.residual = None

    def is_full(self, step: int, probe=None) -> bool:
        tokens, _, first, vec = probe
        residual = first - tokens
        full = step < self.warmup or self.reference is None
        full = full or (self.max_cached is not None and self.in_a_row >= self.max_cached)
        full = full or rel_l1(residual, self.reference) >= self.threshold
        self.in_a_row = 0 if full else self.in_a_row + 1
        if full:
            self.reference = residual
        self.first, self.vec = first, vec
        return full

    def full_step(self, backend, x, t, r, text, probe=None):
        return backend.rest(x, t, text, self.vec, self.first)

    def observe(self, backend, step, sigma, cache) -> None:
        residual = backend.values(cache) - self.first
        if self.forecast is not None:
            self.forecast.update(step, residual)
        self.residual = residual

    def cached_velocity(self, backend, step, sigma, x, t, r, text, cache):
        residual = self.forecast(step) if self.forecast is not None else self.residual
        return backend.tail(x, t, self.vec, self.first + residual)


POLICIES = (
    "disca",
    "disca-predictor",
    "disca-adaptive",
    "full",
    "reuse",
    "taylorseer1",
    "taylorseer2",
    "taylorseer1-gaps",
    "teacache",
    "first-block",
    "dbcache",
    "dbcache-ts1",
    "dbcache-ts2",
)
DBCACHE_POLICIES = ("dbcache", "dbcache-ts1", "dbcache-ts2")
THRESHOLD_POLICIES = ("disca-adaptive", "teacache", "first-block", *DBCACHE_POLICIES)
# About 7 full steps of 20 on the demo (K = 8: 8); DBCache's are also capped at 2 cached steps in a row.
SKIP_THRESHOLDS = {
    "disca-adaptive": 0.2,
    "teacache": 0.5,
    "first-block": 0.3,
    "dbcache": 0.3,
    "dbcache-ts1": 0.3,
    "dbcache-ts2": 0.3,
}


def make_policy(
    name: str,
    anchors=None,
    threshold: float | None = None,
    coefficients=None,
    reuse_gaps=(),
    taylor_gaps=(),
    forecast_reuse_gaps=(),
    **options,
) -> Policy:
    """A policy by name: anchor policies take `anchors` (DisCa also `reuse_gaps` and `taylor_gaps`,
    `taylorseer1-gaps` `forecast_reuse_gaps`), threshold policies
    `threshold` (TeaCache also the bundle's fitted `coefficients`; DBCache `warmup` and `max_cached`)."""
    takes = {"warmup", "max_cached"} if name in DBCACHE_POLICIES or name == "disca-adaptive" else set()
    unknown = sorted(set(options) - takes)
    if unknown:  # an option a policy does not read would be silently dropped
        raise ScheduleError(
            f"policy {name!r} takes no option {unknown[0]!r}"
            + (f" (it takes {', '.join(sorted(takes))})" if takes else "")
        )
    if name in THRESHOLD_POLICIES:
        threshold = SKIP_THRESHOLDS[name] if threshold is None else threshold
        if name in DBCACHE_POLICIES:
            return DBCachePolicy(threshold, order=DBCACHE_POLICIES.index(name), **options)
        if name == "disca-adaptive":
            return AdaptiveDiscaPolicy(threshold, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps, **options)
        return TeaCachePolicy(threshold, coefficients) if name == "teacache" else FirstBlockPolicy(threshold)
    anchors = anchors if anchors is not None else DEFAULT_SCHEDULE.anchors
    if name == "full":
        return FullPolicy()
    if name == "disca":
        return DiscaPolicy(anchors, reuse_gaps, taylor_gaps)
    if name == "disca-predictor":
        return DiscaPredictorPolicy(anchors)
    if name == "reuse":
        return ReusePolicy(anchors)
    if name in ("taylorseer1", "taylorseer2"):
        return TaylorSeerPolicy(anchors, order=int(name[-1]))
    if name == "taylorseer1-gaps":
        return TaylorSeerGapsPolicy(anchors, forecast_reuse_gaps)
    raise ScheduleError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
