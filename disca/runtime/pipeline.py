"""The public Python API: load a bundle on a backend, then generate or denoise.

from disca.runtime import Pipeline

with Pipeline.load("bundles/demo", backend="onnxruntime") as pipe:
    result = pipe.generate("a red circle moving left", seed=0)
    result.video      # (B, C, F, H, W) float32 latent (RGB in [-1, 1] for pixel-space models)
    result.stats      # RunStats: full / predictor calls, ms per call, overhead

    # your own text encoder and VAE around disca's denoising loop:
    latent, stats = pipe.denoise(noise, text_embeddings, steps=20, anchors=[0, 1, 2, 5, 9, 13, 17, 19])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from disca.bundle import Bundle
from disca.errors import BundleError, ShapeError
from disca.runtime.backends import Backend, get_backend
from disca.runtime.sampler import RunStats, denoise
from disca.runtime.schedule import (
    THRESHOLD_POLICIES,
    FullPolicy,
    Policy,
    budget_anchors,
    calibrated_reuse_gaps,
    calibrated_taylor_gaps,
    check_anchors,
    make_policy,
)
from disca.runtime.text import Vocabulary, hash_embed

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "demo"  # the trained demo model, shipped in the package


def demo_bundle() -> Path:
    """The bundle of the trained demo model that ships inside the package."""
    if not (DEMO_BUNDLE / "manifest.json").is_file():
        raise BundleError(f"this install has no demo bundle at {DEMO_BUNDLE}: give a BUNDLE path")
    return DEMO_BUNDLE


@dataclass
class Result:
    video: np.ndarray  # (B, C, F, H, W) final latent
    stats: RunStats
    anchors: list[int] | None  # None for an all-full run


class Pipeline:
    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        text = bundle.manifest.get("text")
        self.vocab = Vocabulary(text["vocab"]) if text else None
        self.text_table = np.load(bundle.path / text["file"]) if text else None

    @classmethod
    def load(cls, path, backend: str = "onnxruntime", verify: bool = False, **backend_options) -> Pipeline:
        """Open a bundle and activate a backend on it (`verify` checks every file's sha256)."""
        bundle = Bundle.open(path, verify=verify)
        return cls(bundle, get_backend(backend, bundle, **backend_options).activate())

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- text

    def embed_prompt(self, prompt: str) -> np.ndarray:
        """-> (L, Dt) text-token embeddings: the bundle's learned table, or hashed words for an untrained model."""
        if self.vocab is None:
            return hash_embed(prompt, self.bundle.text_dim)
        return self.text_table[self.vocab.ids(prompt)]

    def embed_null(self, length: int) -> np.ndarray:
        """-> (length, Dt): the empty prompt (row 0 of the text table), for classifier-free guidance."""
        if self.text_table is None:
            raise BundleError(f"bundle {self.bundle.path} has no text table, so no null prompt for CFG")
        return self.text_table[np.zeros(length, dtype=np.int64)]

    # ---------------------------------------------------------------- sampling

    def _anchors(self, steps: int, anchors):
        """An int K is a budget: the bundle's best-known list of K anchors (searched, default, official, uniform)."""
        if isinstance(anchors, int | np.integer):
            return budget_anchors(self.bundle.manifest, steps, int(anchors))[0]
        return anchors

    def _policy(
        self, steps: int, shift: float, anchors, policy: str = "disca", threshold: float | None = None
    ) -> Policy:
        if anchors == "full":
            return FullPolicy()
        if policy in THRESHOLD_POLICIES:
            fit = self.bundle.manifest.get("teacache") or {}
            return make_policy(policy, threshold=threshold, coefficients=fit.get("coefficients"))
        if anchors is None:
            default = self.bundle.schedule
            if steps != default.steps:
                raise ShapeError(
                    f"the bundle's default anchors {default.anchors} are for {default.steps} steps, "
                    f"not {steps}: pass a schedule for {steps} steps"
                )
            anchors = default.anchors
        reuse_gaps = calibrated_reuse_gaps(self.bundle.manifest, steps, shift)
        taylor_gaps = calibrated_taylor_gaps(self.bundle.manifest, steps, shift)
        return make_policy(policy, check_anchors(anchors, steps), reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps)

    def denoise(
        self,
        latent: np.ndarray,
        text: np.ndarray,
        *,
        steps=None,
        shift=None,
        anchors=None,
        policy: str = "disca",
        threshold: float | None = None,
        on_step=None,
    ) -> tuple[np.ndarray, RunStats]:
        """Denoise your own initial latent (B, C, F, H, W) with your text embeddings (B, L, Dt).

        anchors: list of anchor steps, an int K for the bundle's searched list of K anchors (`disca-export
        schedule`; else the official or a uniform list), "full" for every step full, None for the default.
        policy: what the non-anchor steps run: "disca" (the learned predictor, and the cache through the
        head on the gaps where `disca-export schedule` found that closer), "disca-predictor" (the
        predictor on every cached step), or a training-free baseline: "reuse", "taylorseer1" /
        "taylorseer2" (on the anchors), or "teacache" / "first-block", which pick their full steps
        themselves, skipping while a change measure stays under `threshold` (None: the policy's default).
        """
        steps = steps or self.bundle.schedule.steps
        shift = shift or self.bundle.schedule.shift
        chosen = self._policy(steps, shift, self._anchors(steps, anchors), policy, threshold)
        latent, text = np.asarray(latent, np.float32), np.asarray(text, np.float32)
        self._check_shapes(latent, text)
        return denoise(self.backend, latent, text, steps=steps, shift=shift, policy=chosen, on_step=on_step)

    def generate(
        self,
        prompt: str | None = None,
        *,
        text_embeddings: np.ndarray | None = None,
        steps: int | None = None,
        shift: float | None = None,
        anchors=None,
        policy: str = "disca",
        threshold: float | None = None,
        seed: int = 0,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        batch: int = 1,
        on_step=None,
    ) -> Result:
        """Generate from a prompt (or precomputed (L, Dt) / (B, L, Dt) embeddings), from seeded noise."""
        if (prompt is None) == (text_embeddings is None):
            raise ShapeError("give exactly one of a prompt or text embeddings")
        text = self.embed_prompt(prompt) if prompt is not None else np.asarray(text_embeddings, np.float32)
        if text.ndim == 2:
            text = np.broadcast_to(text, (batch, *text.shape))
        ranges = self.bundle.ranges
        frames, height, width = frames or ranges.frames[1], height or ranges.height[1], width or ranges.width[1]
        noise = np.random.default_rng(seed).standard_normal((batch, self.bundle.channels, frames, height, width))
        anchors = self._anchors(steps or self.bundle.schedule.steps, anchors)
        latent, stats = self.denoise(
            noise, text, steps=steps, shift=shift, anchors=anchors, policy=policy, threshold=threshold, on_step=on_step
        )
        if anchors == "full" or policy in THRESHOLD_POLICIES:
            full = [s for s, graph, *_ in stats.per_step if graph == "full"]
            return Result(latent, stats, None if anchors == "full" else full)
        return Result(latent, stats, anchors or self.bundle.schedule.anchors)

    def _check_shapes(self, latent: np.ndarray, text: np.ndarray) -> None:
        if latent.ndim != 5 or latent.shape[1] != self.bundle.channels:
            raise ShapeError(f"latent must be (B, {self.bundle.channels}, F, H, W), got {latent.shape}")
        if text.ndim != 3 or text.shape[0] != latent.shape[0] or text.shape[2] != self.bundle.text_dim:
            raise ShapeError(
                f"text embeddings must be ({latent.shape[0]}, L, {self.bundle.text_dim}), got {text.shape}"
            )
        b, _, f, h, w = latent.shape
        self.bundle.ranges.check(self.bundle.patch, batch=b, frames=f, height=h, width=w, text_len=text.shape[1])
