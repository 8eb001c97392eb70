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

from disca.errors import NonFiniteError
from disca.runtime.backends.base import Backend
from disca.runtime.schedule import Policy, sigmas


@dataclass
class RunStats:
    backend: str
    policy: str
    steps: int
    full_calls: int = 0
    full_ms: float = 0.0  # time inside full-graph calls, summed
    probe_calls: int = 0  # partial passes of the threshold caches (the `first` graph: embedders + block 0)
    probe_ms: float = 0.0
    total_ms: float = 0.0  # the whole loop
    per_step: list = field(default_factory=list)  # (step, "full" | "predictor" | "head", ms, probe ms)
    cached_graph: str = "predictor"  # the policy's main cached graph
    graphs: dict = field(default_factory=dict)  # cached steps per graph that ran them: {graph: [calls, ms]}

    @property
    def predictor_calls(self) -> int:
        """Cached steps, whichever graph ran them."""
        return sum(calls for calls, _ in self.graphs.values())

    @property
    def predictor_ms(self) -> float:
        """Time inside cached-step calls, summed."""
        return sum(ms for _, ms in self.graphs.values())

    @property
    def overhead_ms(self) -> float:
        """Time in the loop outside backend calls (updates, checks, bookkeeping)."""
        return self.total_ms - self.full_ms - self.predictor_ms - self.probe_ms

    def to_dict(self) -> dict:
        ms_full = self.full_ms / self.full_calls if self.full_calls else None
        ms_pred = self.predictor_ms / self.predictor_calls if self.predictor_calls else None
        return {
            "backend": self.backend,
            "policy": self.policy,
            "cached_graph": self.cached_graph,
            "steps": self.steps,
            "full_calls": self.full_calls,
            "predictor_calls": self.predictor_calls,
            "ms_per_full": ms_full,
            "ms_per_predictor": ms_pred,
            "cached_graphs": {g: {"calls": c, "ms_per_call": ms / c} for g, (c, ms) in self.graphs.items()},
            "probe_calls": self.probe_calls,
            "ms_per_probe": self.probe_ms / self.probe_calls if self.probe_calls else None,
            "overhead_ms": self.overhead_ms,
            "total_ms": self.total_ms,
            "per_step": [{"step": s, "graph": g, "ms": ms, "probe_ms": pm} for s, g, ms, pm in self.per_step],
        }


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
    stats = RunStats(backend.name, policy.name, steps, cached_graph=policy.cached_graph)
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
            stats.probe_calls += 1
            stats.probe_ms += probe_ms
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
        if full:
            stats.full_calls += 1
            stats.full_ms += ms
        else:
            calls, total = stats.graphs.get(graph, (0, 0.0))
            stats.graphs[graph] = [calls + 1, total + ms]
        stats.per_step.append((i, graph, ms, probe_ms))
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
        backend.synchronize()
        stats.full_calls += 2
        stats.full_ms += (time.perf_counter() - t0) * 1e3
        x = x + float(sig[i + 1] - sig[i]) * (uncond + guidance * (cond - uncond))
    out = backend.to_numpy(x)
    stats.total_ms = (time.perf_counter() - start) * 1e3
    return out, stats
