"""The calibration set: prompts, their text embeddings, fixed initial noises, and runs over it.

Every calibration step (FP8 ranges, layer sensitivity, anchor-schedule search, validation)
samples the bundle's own model on this set, so the figures come from real trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from disca.errors import ConfigError
from disca.runtime.pipeline import Pipeline
from disca.runtime.sampler import denoise
from disca.runtime.schedule import DiscaPolicy, FullPolicy, calibrated_reuse_gaps, calibrated_taylor_gaps


@dataclass
class CalibrationSet:
    prompts: list[str]
    texts: list[np.ndarray]  # (L, Dt) each
    noise: np.ndarray  # (n, C, F, H, W)

    def __len__(self) -> int:
        return len(self.prompts)

    def batches(self, size: int = 8):
        """(indices, latents, texts) groups of at most `size` samples with equal text length."""
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(self.texts):
            by_len.setdefault(t.shape[0], []).append(i)
        for idx in by_len.values():
            for k in range(0, len(idx), size):
                part = idx[k : k + size]
                yield part, self.noise[part], np.stack([self.texts[i] for i in part])


def read_prompts(path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"prompt file {path} is a directory; give a text file, one prompt per line")
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompt file {path} is unreadable (it must be UTF-8 text): {e}") from None
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt file {path} has no prompts (one per line)")
    return prompts


def task_prompts(n: int, seed: int = 0) -> list[str]:
    from disca.task import prompt_for, random_attributes

    rng = np.random.default_rng(seed)
    return [prompt_for(random_attributes(rng)) for _ in range(n)]


def uses_task_vocabulary(bundle) -> bool:
    from disca.task import VOCAB

    text = bundle.manifest.get("text")
    return bool(text) and set(VOCAB) <= set(text["vocab"])


def calibration_set(bundle, prompts: list[str] | None = None, n: int = 16, seed: int = 0) -> CalibrationSet:
    """n samples at the bundle's opt shape; prompts cycle if fewer than n are given.

    Without prompts, a bundle trained on disca's synthetic task draws random task prompts;
    any other bundle needs its own (`--prompts FILE`).
    """
    if prompts is None:
        if not uses_task_vocabulary(bundle):
            raise ConfigError(f"bundle {bundle.path} has no built-in prompt set: pass --prompts FILE (one per line)")
        prompts = task_prompts(n, seed)
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    pipe = Pipeline(bundle, backend=None)  # only its prompt embedding is used here
    texts = [pipe.embed_prompt(p).astype(np.float32) for p in prompts]
    r = bundle.ranges
    rng = np.random.default_rng(seed + 1)
    noise = rng.standard_normal((n, bundle.channels, r.frames[1], r.height[1], r.width[1])).astype(np.float32)
    return CalibrationSet(prompts, texts, noise)


def sample_all(
    backend,
    cal: CalibrationSet,
    *,
    steps: int,
    shift: float,
    anchors=None,
    reuse_gaps=(),
    batch: int = 8,
    taylor_gaps=(),
) -> np.ndarray:
    """Final latents (n, C, F, H, W) of the whole set: all-full when anchors is None, else DisCa."""
    out = np.empty_like(cal.noise)
    for idx, latents, texts in cal.batches(batch):
        policy = FullPolicy() if anchors is None else DiscaPolicy(anchors, reuse_gaps, taylor_gaps)
        out[idx], _ = denoise(backend, latents, texts, steps=steps, shift=shift, policy=policy)
    return out


def sample_disca(backend, cal: CalibrationSet, manifest: dict, schedule) -> np.ndarray:
    """DisCa as the runtime runs a bundle: its default `schedule` with the per-gap choices calibrated in its
    manifest (reuse or TaylorSeer-1 through the head, at the calibrated steps and shift only)."""
    steps, shift = schedule.steps, schedule.shift
    return sample_all(
        backend,
        cal,
        steps=steps,
        shift=shift,
        anchors=schedule.anchors,
        reuse_gaps=calibrated_reuse_gaps(manifest, steps, shift),
        taylor_gaps=calibrated_taylor_gaps(manifest, steps, shift),
    )
