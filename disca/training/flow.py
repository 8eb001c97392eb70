"""Flow-matching math shared by the trainers: noise paths, time sampling, samplers.

Path z_t = (1 - t) x + t e (t = 1 is noise), velocity v = e - x. A mean-flow model
predicts the average velocity u(z_t, r, t) over [r, t]; a flow-matching teacher
predicts v(z_t, t) (its r input is ignored).
"""

from __future__ import annotations

import numpy as np
import torch

from disca.models.dit import expand_time as expand
from disca.runtime.schedule import sigmas


def noisy(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 - expand(t, x)) * x + expand(t, x) * e


def logit_normal(batch: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Training times in (0, 1), denser in the middle (SD3's default)."""
    return torch.sigmoid(torch.randn(batch, generator=gen, device=device))


def grid(steps: int, shift: float, device="cpu") -> torch.Tensor:
    """The sampling grid sigma_0 = 1 > ... > sigma_N = 0 as a tensor."""
    return torch.tensor(sigmas(steps, shift), dtype=torch.float32, device=device)


@torch.no_grad()
def guided_velocity(teacher, z, t, text, null_text, guidance: float) -> torch.Tensor:
    """Classifier-free guided velocity of a flow-matching teacher (two passes, batched)."""
    v = teacher(torch.cat([z, z]), torch.cat([t, t]), torch.cat([t, t]), torch.cat([text, null_text]))
    v_cond, v_uncond = v.chunk(2)
    return v_uncond + guidance * (v_cond - v_uncond)


@torch.no_grad()
def sample_teacher(teacher, noise, text, null_text, steps: int = 50, shift: float = 5.0, guidance: float = 4.0):
    """Euler sampling of the teacher with CFG: 2 network passes per step."""
    s = grid(steps, shift, noise.device)
    x = noise
    for i in range(steps):
        t = s[i].expand(x.shape[0])
        x = x + (s[i + 1] - s[i]) * guided_velocity(teacher, x, t, text, null_text, guidance)
    return x


@torch.no_grad()
def teacher_endpoint(teacher, z, t, text, null_text, guidance: float, steps: int, r=None) -> torch.Tensor:
    """The guided teacher's ODE solved from z at time t down to r (default 0) in `steps` uniform Euler steps
    -> z_r (x_0 for r = 0)."""
    r = torch.zeros_like(t) if r is None else r
    for k in range(steps):
        t_k, t_next = t + (r - t) * (k / steps), t + (r - t) * ((k + 1) / steps)
        z = z + expand(t_next - t_k, z) * guided_velocity(teacher, z, t_k, text, null_text, guidance)
    return z


@torch.no_grad()
def student_trajectory(dit, noise, text, steps: int, shift: float):
    """All-full mean-flow sampling that records, per step, the input latent and the trunk's hidden state.

    -> final latent, inputs (steps, B, C, F, H, W), hiddens (steps, B, N, D)
    """
    s = grid(steps, shift, noise.device)
    x, inputs, hiddens = noise, [], []
    for i in range(steps):
        t, r = s[i].expand(x.shape[0]), s[i + 1].expand(x.shape[0])
        tokens, vec, rope = dit.embed(x, t, r, text)
        hidden = dit.trunk(tokens, vec, rope)
        inputs.append(x)
        hiddens.append(hidden)
        x = x + (s[i + 1] - s[i]) * dit.head(hidden, vec, x, t)
    return x, torch.stack(inputs), torch.stack(hiddens)


def to_numpy_clips(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(-1, 1).cpu().numpy()
