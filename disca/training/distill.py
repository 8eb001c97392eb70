"""Stage 2: the few-step student, distilled from the teacher with Restricted MeanFlow.

The student is the teacher's DiT plus an r-embedder, trained to predict the
average velocity u(z_t, r, t) over [r, t]. The target comes from the MeanFlow
identity with the teacher's guided velocity v (CFG distilled in: one pass per
step at sampling):

    u_tgt = v - (t - r) * (v * du/dz + du/dt)      (one JVP in direction (v, 0, 1))
    loss  = w * || u - stopgrad(u_tgt) ||^2,        w = 1 / (||err||^2 + c)^p   (adaptive, p = 1)

Restricted: (t, r) are neighbouring points of the student's own sampling grid,
at most `max_gap` grid intervals apart (the long jumps of plain MeanFlow, e.g.
noise -> data, are never trained). `plain=True` samples (t, r) freely instead,
to show the difference.

The intervals that end at the data (r = 0: the last grid step, and gap-2 pairs reaching it)
take their target from the teacher's ODE instead (`end_steps` Euler steps of the guided
teacher from t to 0). With an x-prediction head, u = (z - x_hat) / t, the identity's target at
r = 0 is u + d x_hat/dt: the student's own output and derivative, the teacher's v only steering
the derivative. Restricted training never meets the boundary r = t = 0 that would pin it, so
this interval drifted, then ran away (README, Training > What made distillation collapse).

The JVP runs attention through PyTorch's math kernel: the fused CPU attention
kernels have no forward-mode AD rule.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from disca.errors import CheckpointError
from disca.models import VideoDiT
from disca.models.checkpoint import Checkpoint, load_checkpoint
from disca.task import sample_batch
from disca.training.evaluation import eval_student
from disca.training.flow import expand, grid, guided_velocity, logit_normal, noisy, teacher_endpoint
from disca.training.loop import TrainArgs, train
from disca.training.state import resume_point


def student_from_teacher(teacher: Checkpoint) -> Checkpoint:
    """The student starts as the teacher: same weights, plus an r-embedder that leaves it unchanged at r = t.

    With the mean combination vec = (emb_t(t) + emb_r(r)) / 2, the r-embedder is a copy of the t-embedder;
    with the sum combination its output layer is zero-initialised.
    """
    if teacher.cfg.dit.mean_flow:
        raise CheckpointError("the teacher checkpoint is already a mean-flow model: give the flow-matching teacher")
    cfg = type(teacher.cfg).from_dict(teacher.cfg.to_dict())
    cfg.dit.mean_flow = True
    student = VideoDiT(cfg.dit)
    missing, unexpected = student.load_state_dict(teacher.dit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("r_embedder.") for k in missing), (missing, unexpected)
    if cfg.dit.time_combine == "mean":
        student.r_embedder.load_state_dict(teacher.dit.t_embedder.state_dict())
    else:
        torch.nn.init.zeros_(student.r_embedder.mlp[2].weight)
        torch.nn.init.zeros_(student.r_embedder.mlp[2].bias)
    return Checkpoint(cfg, student, None, teacher.text, {"teacher": teacher.extra.get("source", "")})


def sample_times(batch: int, gen, sig: torch.Tensor, max_gap: int, plain: bool, equal_frac: float, device):
    """(t, r) with r <= t: grid neighbours at most max_gap apart (restricted) or free (plain MeanFlow)."""
    if plain:
        a, b = logit_normal(batch, gen, device), logit_normal(batch, gen, device)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
    else:
        n = len(sig) - 1
        i = torch.randint(0, n, (batch,), generator=gen, device=device)
        gap = torch.randint(1, max_gap + 1, (batch,), generator=gen, device=device)
        t, r = sig[i], sig[torch.clamp(i + gap, max=n)]
    equal = torch.rand(batch, generator=gen, device=device) < equal_frac  # r = t: the instantaneous velocity
    return t, torch.where(equal, t, r)


def meanflow_target(student, z, t, r, v, text, terms: dict | None = None):
    """-> (u, stopgrad target) of the MeanFlow identity: u_tgt = v - (t - r) * (v du/dz + du/dt).

    `terms`, if given, receives the JVP term (t - r) * du/dt (detached), for the run's log.
    """
    with sdpa_kernel(SDPBackend.MATH):
        u, dudt = torch.func.jvp(
            lambda z_, r_, t_: student(z_, t_, r_, text), (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t))
        )
    jvp_term = (expand(t - r, v) * dudt).detach()
    if terms is not None:
        terms["jvp"] = jvp_term
    return u, v - jvp_term


T_BUCKETS = (0.25, 0.5, 0.75)  # per-t error buckets of the log: t < 0.25, < 0.5, < 0.75, <= 1


def step_terms(err, u, v, target, jvp, t, r, weight, end=None) -> dict:
    """What the log records every step: the loss terms, the target's parts and the error per t bucket."""
    rms = lambda a: a.detach().pow(2).mean().sqrt().item()  # noqa: E731
    logs = {
        "mse": err.mean().item(),
        "u_rms": rms(u),
        "v_rms": rms(v),  # the teacher's guided velocity
        "target_rms": rms(target),
        "weight": weight.mean().item(),
    }
    if jvp is not None:
        logs["jvp_rms"] = rms(jvp)  # (t - r) du/dt: the student's own part of its target
    gap = r < t
    if gap.any():
        logs["mse_gap"] = err[gap].mean().item()
    if (~gap).any():
        logs["mse_equal"] = err[~gap].mean().item()  # r = t: the target is the teacher's velocity alone
    if end is not None and end.any():
        logs["mse_end"] = err[end].mean().item()  # intervals that end at the data (r = 0)
    bucket = torch.bucketize(t, torch.tensor(T_BUCKETS, device=t.device))
    for b in range(len(T_BUCKETS) + 1):
        if (bucket == b).any():
            logs[f"mse_t{b}"] = err[bucket == b].mean().item()
    return logs


def train_student(
    out,
    teacher_dir,
    args: TrainArgs,
    grid_steps: int = 20,
    shift: float = 5.0,
    max_gap: int = 2,
    plain: bool = False,
    guidance: float = 4.0,
    equal_frac: float = 0.25,
    adaptive_c: float = 1e-3,
    adaptive_p: float = 1.0,
    end_steps: int = 4,
    ode_gaps: bool = True,
):
    """`ode_gaps` (the default): every interval with r < t (not only those ending at r = 0) takes the teacher's
    ODE solution over [r, t] as target (`end_steps` Euler steps): no JVP term in any target, none computed.
    Off, the MeanFlow identity's target for 0 < r < t (README, Training > Distilling longer: it runs away)."""
    teacher = load_checkpoint(teacher_dir, require_predictor=False)
    if teacher.text is None:
        raise CheckpointError(f"{teacher_dir} has no text embedding: train it with `disca-train teacher`")
    stage = "distill-plain" if plain else "distill"
    resumed = resume_point(out, stage)
    ckpt, start = resumed if resumed else (student_from_teacher(teacher), 0)
    if ckpt.cfg.dit.hidden_size != teacher.cfg.dit.hidden_size or ckpt.cfg.dit.depth != teacher.cfg.dit.depth:
        raise CheckpointError(f"{out} was distilled from a different teacher architecture than {teacher_dir}")
    device = args.device
    tdit = teacher.dit.to(device).eval().requires_grad_(False)
    text = teacher.text.to(device).eval().requires_grad_(False)  # the teacher's embedding, frozen
    student = ckpt.dit.to(device).train()
    sig = grid(grid_steps, shift, device)

    def loss_fn(step, rng, gen):
        clips, prompts, _ = sample_batch(rng, args.batch, args.frames, args.size)
        x = torch.from_numpy(clips).to(device)
        with torch.no_grad():
            txt = text.encode(prompts)
        null = text.null(args.batch, txt.shape[1])
        e = torch.randn(x.shape, generator=gen, device=device)
        t, r = sample_times(args.batch, gen, sig, max_gap, plain, equal_frac, device)
        z = noisy(x, e, t)
        v = guided_velocity(tdit, z, t, txt, null, guidance)
        terms: dict = {"jvp": None}
        if ode_gaps:  # every r < t target comes from the teacher's ODE below: the identity's JVP is not needed
            u, target = student(z, t, r, txt), v
        else:
            u, target = meanflow_target(student, z, t, r, v, txt, terms)
        end = (r == 0) & (t > 0)
        ode = (r < t) if ode_gaps else end
        if end_steps and ode.any():  # intervals that end at the data: the teacher's own ODE solution as target
            z_r = teacher_endpoint(tdit, z[ode], t[ode], txt[ode], null[ode], guidance, end_steps, r=r[ode])
            target = target.clone()
            target[ode] = (z[ode] - z_r) / expand(t[ode] - r[ode], z_r)
        err = ((u - target) ** 2).flatten(1).mean(1)  # (B,)
        weight = 1.0 / (err.detach() + adaptive_c) ** adaptive_p  # adaptive weighting (p = 0: plain MSE)
        return (weight * err).mean(), step_terms(err, u, v, target, terms["jvp"], t, r, weight, end)

    def evaluate():
        return eval_student(student, text, args.eval_n, args.frames, args.size, grid_steps, shift, device=device)

    extra = {
        "grid_steps": grid_steps,
        "shift": shift,
        "max_gap": max_gap,
        "plain": plain,
        "guidance": guidance,
        "equal_frac": equal_frac,
        "adaptive_c": adaptive_c,
        "adaptive_p": adaptive_p,
        "end_steps": end_steps,
        "ode_gaps": ode_gaps,
        "teacher": str(teacher_dir),
    }
    params = list(student.parameters())
    return train(stage, out, ckpt, params, loss_fn, evaluate, args, start, extra, guard_keys=("mse", "target_rms"))
