"""PyTorch eager backend: the reference. Runs the bundle's weights (needs the `torch` extra)."""

from __future__ import annotations

import json

import numpy as np

from disca.errors import BackendUnavailable, BundleError, DiscaError
from disca.runtime.backends.base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle, device: str = "cpu"):
        super().__init__(bundle)
        self.device = device
        self.modules = None

    @classmethod
    def from_modules(cls, dit, predictor, device: str = "cpu") -> TorchBackend:
        """A backend on in-memory modules (no bundle): how training evaluates with the deployed sampler."""
        backend = cls(None, device)
        backend.modules = (dit, predictor)
        return backend

    def _activate_impl(self) -> None:
        try:
            import torch

            from disca.models import load_checkpoint
            from disca.models.graphs import FirstBlockGraph, FullGraph, HeadGraph, PredictorGraph, RestGraph, TailGraph
        except ImportError:
            raise BackendUnavailable("the torch backend needs PyTorch: pip install 'disca[torch]'") from None
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {self.device} requested but CUDA is not available here")
        if self.modules is not None:
            dit, predictor = self.modules
        else:
            weights = self.bundle.weights_dir
            if weights is None:
                raise BundleError(f"bundle {self.bundle.path} has no PyTorch weights (exported with --no-weights)")
            ckpt = load_checkpoint(weights)
            _check_config(self.bundle, ckpt.cfg.to_dict())
            dit, predictor = ckpt.dit, ckpt.predictor
        self.torch = torch
        self.full_graph = FullGraph(dit).to(self.device)
        self.predictor_graph = PredictorGraph(dit, predictor).to(self.device)
        self.head_graph = HeadGraph(dit).to(self.device)
        self.first_graph = FirstBlockGraph(dit).to(self.device) if hasattr(dit, "first_block") else None
        self.rest_graph = RestGraph(dit).to(self.device) if self.first_graph else None
        self.tail_graph = TailGraph(dit).to(self.device)

    @property
    def forecast_input(self) -> bool:
        if self.modules is not None:  # in-memory modules (training): the predictor says
            return bool(getattr(self.modules[1], "forecast", False))
        return super().forecast_input

    def _deactivate_impl(self) -> None:
        self.full_graph = self.predictor_graph = self.head_graph = self.first_graph = None
        self.rest_graph = self.tail_graph = None

    def _full_impl(self, latent, t, r, text):
        with self.torch.inference_mode():
            return self.full_graph(latent, t, r, text)

    def _predict_impl(self, latent, t, r, text, cache):
        with self.torch.inference_mode():
            return self.predictor_graph(latent, t, r, text, cache)

    def _head_impl(self, latent, t, r, text, hidden):
        with self.torch.inference_mode():
            return self.head_graph(latent, t, r, text, hidden)

    def _first_impl(self, latent, t, r, text):
        if self.first_graph is None:
            raise DiscaError("this model has no probe graph (teacache / first-block need a disca DiT)")
        with self.torch.inference_mode():
            return self.first_graph(latent, t, r, text)

    def _rest_impl(self, latent, t, text, vec, first):
        if self.rest_graph is None:
            raise DiscaError("this model has no rest graph (dbcache needs a disca DiT)")
        with self.torch.inference_mode():
            return self.rest_graph(latent, t, text, vec, first)

    def _tail_impl(self, latent, t, vec, hidden):
        with self.torch.inference_mode():
            return self.tail_graph(latent, t, vec, hidden)

    def values(self, x):
        return x

    def asarray(self, a: np.ndarray):
        return self.torch.from_numpy(np.array(a, dtype=np.float32)).to(
            self.device
        )  # a copy: inputs may be read-only views

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def isfinite(self, x) -> bool:
        return bool(self.torch.isfinite(x).all())

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def _check_config(bundle, weights_model: dict) -> None:
    """The weights' model config is the one the manifest declares (and the graphs were exported from): the
    runtime sizes latents and text from the manifest, the torch modules from the weights."""
    declared = bundle.manifest["model"]
    plain = json.loads(json.dumps(weights_model))  # tuples as lists, as in the manifest
    differ = [k for k in ("dit", "predictor", "vocab") if k in declared and declared[k] != plain.get(k)]
    if differ:
        raise BundleError(
            f"bundle {bundle.path}: the model config of its weights ({bundle.weights_dir.name}/config.json) differs "
            f"from the manifest's model.{differ[0]}: re-export the bundle from one checkpoint"
        )
