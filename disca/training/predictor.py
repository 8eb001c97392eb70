"""Stage 3: the cache predictor, trained on the frozen student's own sampling trajectories.

For random prompts and seeds the student samples with every step full, and we
record each step's input latent and final hidden state. A training pair is
(anchor step a, later step s) with the gaps of the deployment schedule: the
cache is hidden[a], the target hidden[s], the predictor sees the embedding of
the step-s input. Loss: feature regression, plus the same error measured after
the DiT's (frozen) head, i.e. on the velocity; optionally the paper's
adversarial term with a small token-wise discriminator (hinge loss).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from disca.errors import CheckpointError
from disca.models import CachePredictor
from disca.models.checkpoint import Checkpoint, load_checkpoint
from disca.runtime.schedule import check_anchors
from disca.task import sample_batch
from disca.training.evaluation import eval_student
from disca.training.flow import grid, student_trajectory
from disca.training.loop import TrainArgs, train
from disca.training.state import resume_point


def schedule_pairs(anchors: list[int], steps: int) -> list[tuple[int, int]]:
    """(anchor, step) for every cached step of the schedule: the gaps the predictor must bridge at deployment."""
    anchors = check_anchors(anchors, steps)
    return [(max(a for a in anchors if a < s), s) for s in range(steps) if s not in anchors]


def training_pairs(anchors: list[int], steps: int, max_gap: int | None = None) -> list[tuple[int, int]]:
    """The schedule's pairs, plus (with `max_gap`) every (a, s) with 1 <= s - a <= max_gap: one predictor
    then serves any anchor list whose gaps stay within max_gap (other budgets, searched schedules)."""
    pairs = schedule_pairs(anchors, steps)
    if max_gap:
        pairs += [(a, a + g) for g in range(1, max_gap + 1) for a in range(steps - g) if (a, a + g) not in pairs]
    return pairs


@torch.no_grad()
def collect_trajectories(dit, text, n: int, args: TrainArgs, steps: int, shift: float, seed: int, chunk: int = 16):
    """-> prompts, inputs (n, steps, C, F, H, W), hiddens (n, steps, N, D) of all-full student sampling."""
    rng = np.random.default_rng([seed, 777])
    _, prompts, _ = sample_batch(rng, n, args.frames, args.size)
    noise = torch.from_numpy(rng.standard_normal((n, 3, args.frames, args.size, args.size)).astype(np.float32))
    inputs, hiddens = [], []
    for i in range(0, n, chunk):
        txt = text.encode(prompts[i : i + chunk])
        _, x, h = student_trajectory(dit, noise[i : i + chunk].to(args.device), txt, steps, shift)
        inputs.append(x.transpose(0, 1).cpu())
        hiddens.append(h.transpose(0, 1).cpu())
    return prompts, torch.cat(inputs), torch.cat(hiddens)


class Discriminator(nn.Module):
    """Scores hidden states token by token (real: the DiT's, fake: the predictor's)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).mean(dim=(1, 2))  # (B,)


def train_predictor(
    out,
    student_dir,
    args: TrainArgs,
    anchors=(0, 1, 2, 5, 9, 13, 17, 19),
    steps: int = 20,
    shift: float = 5.0,
    trajectories: int = 128,
    velocity_weight: float = 1.0,
    adversarial: float = 0.0,
    max_gap: int | None = None,
):
    student = load_checkpoint(student_dir, require_predictor=False)
    if not student.cfg.dit.mean_flow or student.text is None:
        raise CheckpointError(f"{student_dir} is not a distilled student: train it with `disca-train distill`")
    pairs = training_pairs(list(anchors), steps, max_gap)
    resumed = resume_point(out, "predictor")
    if resumed:
        ckpt, start = resumed
        if ckpt.cfg.dit != student.cfg.dit:
            raise CheckpointError(f"{out} belongs to another student than {student_dir}")
        ckpt.dit, ckpt.text = student.dit, student.text
    else:
        torch.manual_seed(args.seed)
        ckpt, start = (
            Checkpoint(
                student.cfg,
                student.dit,
                CachePredictor(student.cfg.dit, student.cfg.predictor),
                student.text,
                {"student": str(student_dir)},
            ),
            0,
        )
    device = args.device
    dit = ckpt.dit.to(device).eval().requires_grad_(False)
    text = ckpt.text.to(device).eval().requires_grad_(False)
    predictor = ckpt.predictor.to(device).train()
    prompts, inputs, hiddens = collect_trajectories(dit, text, trajectories, args, steps, shift, args.seed)
    sig = grid(steps, shift)
    disc = Discriminator(student.cfg.dit.hidden_size).to(device) if adversarial > 0 else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr) if disc else None

    def loss_fn(step, rng, gen):
        idx = rng.integers(0, trajectories, args.batch)
        pair = [pairs[k] for k in rng.integers(0, len(pairs), args.batch)]
        a, s = torch.tensor([p[0] for p in pair]), torch.tensor([p[1] for p in pair])
        x = inputs[idx, s].to(device)
        cache, target = hiddens[idx, a].to(device), hiddens[idx, s].to(device)
        t, r = sig[s].to(device), sig[s + 1].to(device)
        with torch.no_grad():
            tokens, vec, rope = dit.embed(x, t, r, text.encode([prompts[i] for i in idx]))
        pred = predictor(tokens, cache, vec, rope)
        feat = torch.mean((pred - target) ** 2)
        loss, logs = feat, {"feat": feat.item()}
        if velocity_weight:
            vel = torch.mean((dit.head(pred, vec, x, t) - dit.head(target, vec, x, t)) ** 2)
            loss = loss + velocity_weight * vel
            logs["vel"] = vel.item()
        if disc is not None:
            d_loss = torch.relu(1 - disc(target)).mean() + torch.relu(1 + disc(pred.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            loss = loss + adversarial * (-disc(pred).mean())
            logs["d"] = d_loss.item()
        return loss, logs

    def evaluate():
        return eval_student(
            dit, text, args.eval_n, args.frames, args.size, steps, shift, predictor, list(anchors), device
        )

    extra = {
        "anchors": list(anchors),
        "grid_steps": steps,  # not "steps": that key is the optimizer steps of the train args
        "shift": shift,
        "trajectories": trajectories,
        "velocity_weight": velocity_weight,
        "adversarial": adversarial,
        "max_gap": max_gap,
        "student": str(student_dir),
    }
    return train("predictor", out, ckpt, list(predictor.parameters()), loss_fn, evaluate, args, start, extra)
