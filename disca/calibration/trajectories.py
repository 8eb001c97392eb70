"""Graph inputs recorded from real sampling runs, the data every calibration step uses.

FP8 ranges must come from what the graphs see when sampling (latents at every noise
level, real caches), not from random noise: a `RecordingBackend` wraps any backend and
keeps a host copy of each call's inputs while the ordinary sampler runs.
"""

from __future__ import annotations

import numpy as np

from disca.runtime.backends.base import Backend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import DiscaPolicy, FullPolicy


class RecordingBackend(Backend):
    """Delegates to `inner` and records {input name: numpy array} for every full / predictor call."""

    def __init__(self, inner: Backend):
        super().__init__(inner.bundle)
        self.inner = inner
        self.name = inner.name
        self.calls: dict[str, list[dict]] = {"full": [], "predictor": []}

    def _activate_impl(self) -> None:
        self.inner.activate()

    def _host(self, **arrays) -> dict:
        return {k: np.array(self.inner.to_numpy(v), dtype=np.float32) for k, v in arrays.items()}

    def _full_impl(self, latent, t, r, text):
        self.calls["full"].append(self._host(latent=latent, t=t, r=r, text=text))
        return self.inner.full(latent, t, r, text)

    def _predict_impl(self, latent, t, r, text, cache):
        self.calls["predictor"].append(self._host(latent=latent, t=t, r=r, text=text, hidden=cache))
        return self.inner.predict(latent, t, r, text, cache)

    def asarray(self, a):
        return self.inner.asarray(a)

    def to_numpy(self, x):
        return self.inner.to_numpy(x)

    def isfinite(self, x) -> bool:
        return self.inner.isfinite(x)

    def synchronize(self) -> None:
        self.inner.synchronize()


def record_inputs(backend: Backend, latents, texts, *, steps: int, shift: float, anchors) -> dict[str, list[dict]]:
    """Inputs of both graphs over real runs, one per (latent, text) pair.

    Each pair is sampled twice: all-full (the full graph at every noise level) and DisCa with
    `anchors` (the predictor on the cache / input pairs of the deployment gaps).
    """
    rec = RecordingBackend(backend)
    with rec:
        for latent, text in zip(latents, texts):
            denoise(rec, latent, text, steps=steps, shift=shift, policy=FullPolicy())
            denoise(rec, latent, text, steps=steps, shift=shift, policy=DiscaPolicy(anchors))
    return rec.calls
