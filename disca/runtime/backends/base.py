"""The backend interface the sampler drives (Polygraphy-style: activate / infer / deactivate).

A backend runs the bundle's two graphs:
    full(latent, t, r, text)           -> (velocity, cache)   anchor step
    predict(latent, t, r, text, cache) -> velocity            cached step (learned predictor)
    head(latent, t, r, text, hidden)   -> velocity            cached step (training-free baselines)
    first(latent, t, r, text)          -> (tokens, modulated, first[, vec])   probe of the threshold caches
    rest(latent, t, text, vec, first)  -> (velocity, hidden)   DBCache's full step after the probe
    tail(latent, t, vec, hidden)       -> velocity            DBCache's cached step (the head on the probe's vec)
Arrays are the backend's own (numpy, torch tensors, ...): the sampler only adds
and scales them, so latents and the cache can stay on the device between steps.
The cache is opaque to the sampler: it is written by `full` and read in place by
`predict`, never copied to the host.
"""

from __future__ import annotations

import numpy as np

from disca.errors import DiscaError

# Who runs the optional head graph: named in the error when a bundle lacks it.
HEAD_USERS = "DisCa on its calibrated reuse gaps, reuse / taylorseer / teacache / first-block"


class Backend:
    name = "base"

    def __init__(self, bundle):
        self.bundle = bundle
        self.active = False

    @property
    def forecast_input(self) -> bool:
        """Whether the predictor takes the Taylor forecast of the hidden state as its cache (the bundle's
        `model.predictor.forecast`; absent in older bundles: the last anchor's hidden state)."""
        model = (self.bundle.manifest.get("model") or {}) if self.bundle is not None else {}
        return bool((model.get("predictor") or {}).get("forecast", False))

    # ---------------------------------------------------------------- lifecycle

    def activate(self) -> Backend:
        if not self.active:
            self._activate_impl()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate_impl()
            self.active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ---------------------------------------------------------------- graphs

    def full(self, latent, t, r, text):
        self._require_active()
        return self._full_impl(latent, t, r, text)

    def predict(self, latent, t, r, text, cache):
        self._require_active()
        if cache is None:
            raise DiscaError("predict() needs a cache: run full() first (step 0 must be an anchor)")
        return self._predict_impl(latent, t, r, text, cache)

    def head(self, latent, t, r, text, hidden):
        """Velocity from a given final hidden state (the training-free baselines' cached step)."""
        self._require_active()
        return self._head_impl(latent, t, r, text, hidden)

    def first(self, latent, t, r, text):
        """The probe graph (embedders + block 0): TeaCache and First-Block-Cache decide on its outputs."""
        self._require_active()
        return self._first_impl(latent, t, r, text)

    def rest(self, latent, t, text, vec, first):
        """Blocks 1..N + head after the probe: probe + rest is one full pass (DBCache's full step)."""
        self._require_active()
        return self._rest_impl(latent, t, text, vec, first)

    def tail(self, latent, t, vec, hidden):
        """The head on a given hidden state with the probe's `vec` (DBCache's cached step)."""
        self._require_active()
        return self._tail_impl(latent, t, vec, hidden)

    def _require_active(self) -> None:
        if not self.active:
            raise DiscaError(
                f"the {self.name} backend is not active: use it as a context manager or call activate() "
                "(a closed Pipeline: load it again)"
            )

    # ---------------------------------------------------------------- arrays (numpy defaults)

    def asarray(self, a: np.ndarray):
        return np.ascontiguousarray(a, dtype=np.float32)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def values(self, x):
        """`x` as an array the policies can do arithmetic on, without leaving the device where possible
        (numpy here; the torch-based backends return their tensors as they are)."""
        return self.to_numpy(x)

    def isfinite(self, x) -> bool:
        return bool(np.isfinite(self.to_numpy(x)).all())

    def synchronize(self) -> None:
        """Wait for queued device work (so timings are real)."""

    # ---------------------------------------------------------------- to implement

    def _activate_impl(self) -> None:
        raise NotImplementedError

    def _deactivate_impl(self) -> None:
        pass

    def _full_impl(self, latent, t, r, text):
        raise NotImplementedError

    def _predict_impl(self, latent, t, r, text, cache):
        raise NotImplementedError

    def _head_impl(self, latent, t, r, text, hidden):
        raise DiscaError(f"the {self.name} backend does not run the head graph (needed by reuse / taylorseer)")

    def _first_impl(self, latent, t, r, text):
        raise DiscaError(f"the {self.name} backend does not run the probe graph (needed by teacache / first-block)")

    def _rest_impl(self, latent, t, text, vec, first):
        raise DiscaError(f"the {self.name} backend does not run the rest graph (needed by dbcache)")

    def _tail_impl(self, latent, t, vec, hidden):
        raise DiscaError(f"the {self.name} backend does not run the tail graph (needed by dbcache)")
