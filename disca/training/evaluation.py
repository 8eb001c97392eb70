"""The periodic evaluation of every stage: prompt adherence (and PSNR) on a fixed prompt x seed set."""

from __future__ import annotations

import numpy as np
import torch

from disca.metrics import psnr
from disca.runtime.sampler import denoise
from disca.runtime.schedule import DiscaPolicy, FullPolicy
from disca.task import sample_batch, score
from disca.training.flow import sample_teacher, to_numpy_clips

EVAL_SEED = 20260


def eval_set(n: int, frames: int, size: int, channels: int = 3):
    """Fixed prompts and initial noises (the same for every stage and run)."""
    rng = np.random.default_rng(EVAL_SEED)
    _, prompts, _ = sample_batch(rng, n, frames, size)
    noise = rng.standard_normal((n, channels, frames, size, size)).astype(np.float32)
    return prompts, noise


@torch.no_grad()
def eval_teacher(dit, text, n, frames, size, steps=50, shift=5.0, guidance=4.0, device="cpu") -> dict:
    prompts, noise = eval_set(n, frames, size)
    dit.eval()
    txt = text.encode(prompts)
    x = sample_teacher(dit, torch.from_numpy(noise).to(device), txt, text.null(n, txt.shape[1]), steps, shift, guidance)
    dit.train()
    s = score(to_numpy_clips(x), prompts)
    return {"adherence": s["all"], "color": s["color"], "shape": s["shape"], "motion": s["motion"]}


@torch.no_grad()
def eval_student(dit, text, n, frames, size, steps=20, shift=5.0, predictor=None, anchors=None, device="cpu"):
    """Adherence of all-full sampling; with a predictor, also of DisCa sampling and its PSNR against all-full."""
    from disca.runtime.backends.torch_backend import TorchBackend

    prompts, noise = eval_set(n, frames, size)
    modes = [dit] + ([predictor] if predictor is not None else [])
    for m in modes:
        m.eval()
    txt = text.encode(prompts).cpu().numpy()
    with TorchBackend.from_modules(dit, predictor, device) as backend:
        full, _ = denoise(backend, noise, txt, steps=steps, shift=shift, policy=FullPolicy())
        out = {"adherence_full": score(np.clip(full, -1, 1), prompts)["all"]}
        if predictor is not None:
            cached, _ = denoise(backend, noise, txt, steps=steps, shift=shift, policy=DiscaPolicy(anchors))
            out["adherence_disca"] = score(np.clip(cached, -1, 1), prompts)["all"]
            out["psnr_disca_vs_full"] = psnr(np.clip(cached, -1, 1), np.clip(full, -1, 1))
    for m in modes:
        m.train()
    return out
