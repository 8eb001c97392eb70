"""The DisCa denoising loop: step by step, the full DiT (anchor: refresh the cache)
or the predictor (cached step), with a mean-flow Euler update.

    x <- x + (sigma_next - sigma) * u(x, t=sigma, r=sigma_next)

(r = 0 on the last step, since sigma_N = 0; a non-mean-flow model ignores r.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from disca.errors import BundleError, NonFiniteError
from disca.runtime.backends.base import Backend
from disca.runtime.schedule import Policy, sigmas

GRAPHS = ("full", "predictor", "head", "tail", "first")  # every graph a step can call, as the statistics name them


@dataclass
class RunStats:
    """What a run called: per graph, calls and time. `first` is the probe of the threshold caches
    (embedders + block 0), a partial pass run before a step decides; `predictor`, `head` and `tail` run
    the cached steps (DisCa's reuse and TaylorSeer gaps and the anchor caches run the head, DBCache the
    tail: the head on the probe's outputs). `full` counts full steps: for DBCache, the probe plus the
    `rest` graph (blocks 1..N + head), one full pass between them."""

    backend: str
    policy: str
    steps: int
    total_ms: float = 0.0  # the whole loop
    per_step: list = field(default_factory=list)  # (step, "full" | "predictor" | "head", ms, probe ms)
    graphs: dict = field(default_factory=dict)  # {graph: [calls, ms summed]}

    def add(self, graph: str, ms: float, calls: int = 1) -> None:
        entry = self.graphs.setdefault(graph, [0, 0.0])
        entry[0] += calls
        entry[1] += ms

    def calls(self, graph: str) -> int:
        return self.graphs.get(graph, (0, 0.0))[0]

    def ms(self, graph: str) -> float:
        """Time inside calls of `graph`, summed."""
        return self.graphs.get(graph, (0, 0.0))[1]

    full_calls = property(lambda self: self.calls("full"))
    predictor_calls = property(lambda self: self.calls("predictor"), doc="Predictor calls only (not the head).")
    head_calls = property(lambda self: self.calls("head"))
    first_calls = property(lambda self: self.calls("first"))

    @property
    def cached_calls(self) -> int:
        """Cached steps, whichever graph ran them (predictor + head + tail)."""
        return self.predictor_calls + self.head_calls + self.calls("tail")

    @property
    def overhead_ms(self) -> float:
        """Time in the loop outside backend calls (updates, checks, bookkeeping)."""
        return self.total_ms - sum(ms for _, ms in self.graphs.values())

    def to_dict(self) -> dict:
        out = {"backend": self.backend, "policy": self.policy, "steps": self.steps}
        for g in GRAPHS:
            n = self.calls(g)
            out[f"{g}_calls"], out[f"ms_per_{g}"] = n, (self.ms(g) / n if n else None)
        cached_ms = self.ms("predictor") + self.ms("head") + self.ms("tail")
        out["cached_calls"] = self.cached_calls
        out["ms_per_cached"] = cached_ms / self.cached_calls if self.cached_calls else None
        out["overhead_ms"], out["total_ms"] = self.overhead_ms, self.total_ms
        out["per_step"] = [{"step": s, "graph": g, "ms": ms, "probe_ms": pm} for s, g, ms, pm in self.per_step]
        return out


def _check_velocity(u, x, step: int, graph: str) -> None:
    """A velocity must have the latent's shape: numpy would broadcast a smaller one into a wrong video."""
    if tuple(u.shape) != tuple(x.shape):
        raise BundleError(
            f"step {step}: the {graph} graph returned a velocity of shape {tuple(u.shape)}, not the latent's "
            f"{tuple(x.shape)}: the bundle's graph does not match its manifest; re-export it"
        )


def denoise(
    backend: Backend,
    latent: np.ndarray,
    text: np.ndarray,
    *,
    steps: int,
    shift: float,
    policy: Policy,
    on_step: Callable[[int, str, float], None] | None = None,
) -> tuple[np.ndarray, RunStats]:
    """Run the sampling loop from `latent` (noise at sigma=1) to data. -> (final latent, stats)"""
    sig = sigmas(steps, shift).astype(np.float32)
    policy.reset(steps)
    batch = latent.shape[0]
    stats = RunStats(backend.name, policy.name, steps)
    times = [backend.asarray(np.full(batch, s, dtype=np.float32)) for s in sig]  # built once, off the loop
    start = time.perf_counter()
    x = backend.asarray(latent)
    text = backend.asarray(text)
    cache = None
    for i in range(steps):
        t, r = times[i], times[i + 1]
        probe, probe_ms = None, 0.0
        if policy.probe:
            t0 = time.perf_counter()
            probe = backend.first(x, t, r, text)
            backend.synchronize()
            probe_ms = (time.perf_counter() - t0) * 1e3
            stats.add("first", probe_ms)
        full = policy.is_full(i, probe)
        graph = "full" if full else policy.cached_graph_at(i)
        t0 = time.perf_counter()
        if full:
            u, cache = policy.full_step(backend, x, t, r, text, probe)
            policy.observe(backend, i, float(sig[i]), cache)
        else:
            u = policy.cached_velocity(backend, i, float(sig[i]), x, t, r, text, cache)
        backend.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        stats.add(graph, ms)
        stats.per_step.append((i, graph, ms, probe_ms))
        _check_velocity(u, x, i, graph)
        if not backend.isfinite(u) or (full and not backend.isfinite(cache)):
            raise NonFiniteError(f"step {i}: the {graph} graph produced NaN or Inf")
        x = x + float(sig[i + 1] - sig[i]) * u
        if on_step is not None:
            on_step(i, graph, ms)
    out = backend.to_numpy(x)
    stats.total_ms = (time.perf_counter() - start) * 1e3
    return out, stats


def denoise_cfg(
    backend: Backend,
    latent: np.ndarray,
    text: np.ndarray,
    null_text: np.ndarray,
    *,
    steps: int,
    shift: float,
    guidance: float,
) -> tuple[np.ndarray, RunStats]:
    """Euler sampling of a flow-matching (teacher) bundle with classifier-free guidance: two full
    passes per step, v = v_null + guidance * (v_text - v_null). The reference a DisCa student is
    distilled from and measured against."""
    sig = sigmas(steps, shift).astype(np.float32)
    stats = RunStats(backend.name, f"cfg{guidance:g}", steps)
    start = time.perf_counter()
    x, text, null_text = backend.asarray(latent), backend.asarray(text), backend.asarray(null_text)
    for i in range(steps):
        t = backend.asarray(np.full(latent.shape[0], sig[i], dtype=np.float32))
        t0 = time.perf_counter()
        cond, _ = backend.full(x, t, t, text)
        uncond, _ = backend.full(x, t, t, null_text)
        _check_velocity(cond, x, i, "full")
        backend.synchronize()
        stats.add("full", (time.perf_counter() - t0) * 1e3, calls=2)
        x = x + float(sig[i + 1] - sig[i]) * (uncond + guidance * (cond - uncond))
    out = backend.to_numpy(x)
    stats.total_ms = (time.perf_counter() - start) * 1e3
    return out, stats
