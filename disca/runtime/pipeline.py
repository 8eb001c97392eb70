"""The public Python API: load a bundle on a backend, then generate or denoise (see `Pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disca.bundle import SHIPPED_DEMO, Bundle, shipped_demo
from disca.errors import BundleError, InputError, ScheduleError, ShapeError
from disca.manifest import MAX_STEPS
from disca.runtime.backends import Backend, get_backend
from disca.runtime.inputs import check_prompt, float_array, non_negative_int, positive_float, positive_int
from disca.runtime.sampler import RunStats, denoise
from disca.runtime.schedule import (
    POLICIES,
    THRESHOLD_POLICIES,
    FullPolicy,
    Policy,
    budget_anchors,
    calibrated_forecast_reuse_gaps,
    calibrated_reuse_gaps,
    calibrated_taylor_gaps,
    check_anchors,
    make_policy,
)
from disca.runtime.text import hash_embed
from disca.vocab import Vocabulary

DEMO_BUNDLE = SHIPPED_DEMO  # the trained demo model, shipped in the package
demo_bundle = shipped_demo  # its path; `Pipeline.load("demo")` opens it


@dataclass
class Result:
    video: np.ndarray  # (B, C, F, H, W) float32 final latent, as the model produced it (not clipped)
    stats: RunStats
    anchors: list[int] | None  # None for an all-full run


class Pipeline:
    """A bundle on a backend: prompt (or your text embeddings) -> denoised latent, with DisCa's schedule.

    Open one with `Pipeline.load(path)`, where `path` is a bundle directory or "demo", the demo
    model shipped with disca (a directory named "demo" takes precedence); close it, or use `with`.

        with Pipeline.load("demo") as pipe:
            result = pipe.generate("a red circle moving left", seed=0)
            result.video  # (1, 3, 8, 32, 32) = (B, C, F, H, W) float32, the final latent
            result.stats  # RunStats: calls and ms per graph (full, predictor, head, first), overhead

            # your own initial latent and text encoder (and VAE after):
            noise = np.random.default_rng(0).standard_normal(pipe.latent_shape())  # generate(seed=0)'s noise
            text = pipe.embed_prompt("a red circle moving left")[None]  # (1, L, Dt): (B, words, text width)
            latent, stats = pipe.denoise(noise, text, anchors=[0, 1, 2, 5, 9, 13, 17, 19])

    The latent's default shape is the bundle's optimum (`latent_shape()`); any shape inside the
    bundle's validated ranges runs (`disca-export inspect` lists them).
    """

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        text = bundle.manifest.get("text")
        self.vocab = Vocabulary(text["vocab"]) if text else None
        self.text_table = _text_table(bundle) if text else None

    @classmethod
    def load(cls, path, backend: str = "onnxruntime", verify: bool = False, **backend_options) -> Pipeline:
        """Open a bundle and activate a backend on it (`verify` checks every file's sha256)."""
        bundle = Bundle.open(path, verify=verify)
        active = get_backend(backend, bundle, **backend_options).activate()
        try:
            return cls(bundle, active)
        except BaseException:  # e.g. a bad text table: release the sessions the caller never gets to close
            active.deactivate()
            raise

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- text

    def embed_prompt(self, prompt: str) -> np.ndarray:
        """-> (L, Dt) text-token embeddings: the bundle's learned table, or hashed words for an untrained model."""
        check_prompt(prompt)
        if self.vocab is None:
            return hash_embed(prompt, self.bundle.text_dim)
        return self.text_table[self.vocab.ids(prompt)]

    def embed_null(self, length: int) -> np.ndarray:
        """-> (length, Dt): the empty prompt (row 0 of the text table), for classifier-free guidance."""
        if self.text_table is None:
            raise BundleError(f"bundle {self.bundle.path} has no text table, so no null prompt for CFG")
        length = positive_int("length", length, self.bundle.ranges.text_len[2])
        return self.text_table[np.zeros(length, dtype=np.int64)]

    def latent_shape(
        self, frames: int | None = None, height: int | None = None, width: int | None = None, batch: int = 1
    ) -> tuple[int, int, int, int, int]:
        """(B, C, F, H, W) of a latent; unset sizes are the bundle's optimum (the middle of its ranges). A size
        outside the ranges (bounded by the manifest's schema, `disca.manifest.MAX_LATENT`) is a ShapeError."""
        ranges = self.bundle.ranges  # None: the opt shape the bundle was exported for; 0 is an error, not a default
        frames, height, width = (
            getattr(ranges, name)[1] if value is None else positive_int(name, value)
            for name, value in (("frames", frames), ("height", height), ("width", width))
        )
        batch = positive_int("batch", batch)
        ranges.check(self.bundle.patch, batch=batch, frames=frames, height=height, width=width)
        return batch, self.bundle.channels, frames, height, width

    # ---------------------------------------------------------------- sampling

    def _anchors(self, steps: int, anchors):
        """An int K is a budget: the bundle's best-known list of K anchors (searched, default, official, uniform)."""
        if isinstance(anchors, np.ndarray):
            anchors = anchors.tolist()
        if isinstance(anchors, bool) or not (
            anchors is None or anchors == "full" or isinstance(anchors, int | np.integer | list | tuple)
        ):
            raise ScheduleError(f"anchors must be a list of steps, an int K, 'full' or None, got {anchors!r}")
        if isinstance(anchors, int | np.integer):
            return budget_anchors(self.bundle.manifest, steps, int(anchors))[0]
        return anchors

    def _policy(
        self, steps: int, shift: float, anchors, policy: str = "disca", threshold: float | None = None
    ) -> Policy:
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ScheduleError(f"unknown policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        # an argument that would change nothing is refused: the caller meant something else
        if threshold is not None and policy not in THRESHOLD_POLICIES:
            raise ScheduleError(f"threshold applies to {', '.join(THRESHOLD_POLICIES)}, not {policy}: drop it")
        if policy in THRESHOLD_POLICIES and anchors is not None:
            raise ScheduleError(f"{policy} chooses its anchors online: pass anchors=None")
        if anchors == "full" or policy == "full":
            if anchors not in (None, "full") or policy not in ("disca", "full"):
                raise ScheduleError(
                    "policy='full' and anchors='full' run every step full: pass no other anchors or policy"
                )
            return FullPolicy()
        reuse_gaps = calibrated_reuse_gaps(self.bundle.manifest, steps, shift)
        taylor_gaps = calibrated_taylor_gaps(self.bundle.manifest, steps, shift)
        if policy in THRESHOLD_POLICIES:
            fit = self.bundle.manifest.get("teacache") or {}
            return make_policy(
                policy,
                threshold=threshold,
                coefficients=fit.get("coefficients"),
                reuse_gaps=reuse_gaps,
                taylor_gaps=taylor_gaps,
            )
        if anchors is None:
            default = self.bundle.schedule
            if steps != default.steps:
                raise ShapeError(
                    f"the bundle's default anchors {default.anchors} are for {default.steps} steps, "
                    f"not {steps}: pass a schedule for {steps} steps"
                )
            anchors = default.anchors
        return make_policy(
            policy,
            check_anchors(anchors, steps),
            reuse_gaps=reuse_gaps,
            taylor_gaps=taylor_gaps,
            forecast_reuse_gaps=calibrated_forecast_reuse_gaps(self.bundle.manifest, steps, shift),
        )

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
        steps = self.bundle.schedule.steps if steps is None else positive_int("steps", steps, MAX_STEPS)
        shift = self.bundle.schedule.shift if shift is None else positive_float("shift", shift)
        threshold = None if threshold is None else positive_float("threshold", threshold)
        chosen = self._policy(steps, shift, self._anchors(steps, anchors), policy, threshold)
        latent, text = float_array("latent", latent), float_array("text embeddings", text)
        self._check_shapes(latent, text)
        if on_step is not None and not callable(on_step):  # before the first graph runs, not after it
            raise InputError(f"on_step must be a callable (step, graph, ms), got {type(on_step).__name__}")
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
        seed: int | list[int] = 0,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        batch: int = 1,
        on_step=None,
    ) -> Result:
        """Generate from a prompt (or precomputed (L, Dt) / (B, L, Dt) embeddings), from seeded noise.

        seed: one int (one noise draw for the whole batch), or a list of ints, one per video: video i
        then starts from the same noise as a batch-1 run with seed[i] (how `disca-serve` batches requests).
        """
        if (prompt is None) == (text_embeddings is None):
            raise ShapeError("give exactly one of a prompt or text embeddings")
        if isinstance(seed, np.ndarray) and seed.ndim == 0:
            seed = seed.item()
        seeds = [non_negative_int("seed", s) for s in seed] if isinstance(seed, list | tuple | np.ndarray) else None
        if seeds is not None and (not seeds or batch not in (1, len(seeds))):
            raise InputError(f"a seed list gives one seed per video: {len(seeds)} seeds for batch {batch}")
        batch = positive_int("batch", len(seeds) if seeds is not None else batch)
        shape = self.latent_shape(frames, height, width, batch)  # inside the bundle's ranges, before any allocation
        _, _, frames, height, width = shape
        steps = None if steps is None else positive_int("steps", steps, MAX_STEPS)
        text = self.embed_prompt(prompt) if prompt is not None else float_array("text embeddings", text_embeddings)
        if text.ndim == 2:
            text = np.broadcast_to(text, (batch, *text.shape))
        if seeds is None:
            noise = np.random.default_rng(non_negative_int("seed", seed)).standard_normal(shape)
        else:
            noise = np.concatenate([np.random.default_rng(s).standard_normal((1, *shape[1:])) for s in seeds])
        anchors = self._anchors(self.bundle.schedule.steps if steps is None else steps, anchors)
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


def _text_table(bundle: Bundle) -> np.ndarray:
    """The bundle's (vocabulary, Dt) word-embedding table, checked: it is untrusted input like the rest."""
    path = bundle.text_path
    try:  # mapped, not read: a header may declare any shape, and it is checked before anything is allocated
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BundleError(f"bundle {bundle.path}: the text table {path.name} (text.file) is unreadable: {e}") from None
    want = (len(bundle.manifest["text"]["vocab"]), bundle.text_dim)
    if not isinstance(table, np.ndarray) or table.dtype.kind != "f" or table.shape != want:
        got = f"{table.dtype} {table.shape}" if isinstance(table, np.ndarray) else type(table).__name__
        raise BundleError(f"bundle {bundle.path}: the text table {path.name} must be float {want}, got {got}")
    if not np.isfinite(table).all():
        raise BundleError(f"bundle {bundle.path}: the text table {path.name} contains NaN or Inf")
    return np.array(table, dtype=np.float32)  # a copy in memory: the file may change or go after this
