"""Stage 3: the cache predictor, trained on the frozen host's own sampling trajectories.

The host (our distilled student, or an adapted diffusers transformer) samples
with every step full from given text embeddings and noises, and we record each
step's input latent and final hidden state. A training pair is (anchor step a,
later step s) with the gaps of the deployment schedule: the cache is hidden[a],
the target hidden[s], the predictor sees the embedding of the step-s input.
Loss: feature regression, plus the same error measured after the host's
(frozen) head, i.e. on the velocity; optionally the paper's adversarial term
with a small token-wise discriminator (hinge loss).

    train_predictor(out, student_dir, args)                     our own student checkpoint, synthetic task
    train_host_predictor(out, adapter, text, args, source=...)  a diffusers host (disca.models.adapters)

Both call `fit_predictor`, which knows only the host's embed / trunk / head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from disca.errors import CheckpointError, ConfigError, ShapeError
from disca.models import CachePredictor
from disca.models.checkpoint import Checkpoint, load_checkpoint
from disca.runtime.schedule import DEFAULT_SCHEDULE, check_anchors, uniform_anchors
from disca.task import sample_batch
from disca.training.evaluation import eval_student
from disca.training.flow import grid, student_trajectory
from disca.training.loop import TrainArgs, train
from disca.training.state import resume_point

TRAJECTORY_SEED = 777  # second word of the trajectories' rng seed: keeps them apart from the training steps' draws


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


def anchor_family(steps: int, schedule: list[int], max_spacing: int) -> list[list[int]]:
    """The anchor lists a forecast predictor is trained for: the deployment schedule, even spacing at every
    budget, and warm-up patterns (steps 0 and 1 full, then one every g steps, as DBCache's static cache) for
    spacings g up to `max_spacing`. A forecast depends on the spacing of the two anchors behind it, so the
    predictor learns on the (previous anchor, anchor, step) triples these lists produce."""
    lists = [check_anchors(schedule, steps)]
    lists += [uniform_anchors(steps, k) for k in range(2, steps)]
    lists += [sorted({0, *range(1, steps, g)}) for g in range(2, max_spacing + 1)]
    return lists


def searched_lists(bundle_path, steps: int, shift: float) -> list[list[int]]:
    """The anchor lists searched for a bundle (`disca-export schedule`, its `anchor_lists`) on this sampling grid,
    every budget that caches a step: the lists deployment runs, to train (or fine-tune) the predictor on."""
    from disca.bundle import Bundle

    record = Bundle.open(bundle_path).manifest.get("anchor_lists") or {}
    if not record.get("lists"):
        raise ConfigError(f"bundle {bundle_path} has no searched anchor lists: run `disca-export schedule` on it")
    if record.get("steps") != steps or record.get("shift") not in (None, shift):
        raise ConfigError(
            f"bundle {bundle_path}'s lists were searched for {record.get('steps')} steps at shift {record.get('shift')}"
            f", not --grid-steps {steps} at --shift {shift}: train on its grid"
        )
    return [check_anchors([int(a) for a in v], steps) for k, v in sorted(record["lists"].items()) if int(k) < steps]


def training_triples(lists: list[list[int]], steps: int) -> list[tuple[int, int, int]]:
    """(previous anchor or -1, anchor, step) for every cached step of every list, without repeats."""
    triples = set()
    for anchors in lists:
        for s in range(steps):
            if s not in anchors:
                before = [a for a in anchors if a < s]
                triples.add((before[-2] if len(before) > 1 else -1, before[-1], s))
    return sorted(triples)


def training_segments(lists: list[list[int]], steps: int) -> list[tuple[int, int, int]]:
    """(previous anchor or -1, anchor, next anchor or `steps`) for every run of cached steps of every list."""
    segments = set()
    for anchors in lists:
        anchors = sorted(anchors)
        for k, a in enumerate(anchors):
            end = anchors[k + 1] if k + 1 < len(anchors) else steps
            if end - a > 1:
                segments.add((anchors[k - 1] if k else -1, a, end))
    return sorted(segments)


@dataclass
class Trajectories:
    """All-full sampling runs of the frozen host (kept on the CPU: they can be large)."""

    text: torch.Tensor  # (n, L, Dt) each run's text embeddings
    inputs: torch.Tensor  # (n, steps, C, F, H, W) each step's input latent
    hiddens: torch.Tensor  # (n, steps, N, H) each step's trunk output: the cache at an anchor, else the target

    def __len__(self) -> int:
        return self.inputs.shape[0]


@torch.no_grad()
def record_trajectories(host, text, noise, steps: int, shift: float, device="cpu", chunk: int = 16) -> Trajectories:
    """Sample the host all-full from each (text[i], noise[i]) and record every step."""
    inputs, hiddens = [], []
    for i in range(0, len(noise), chunk):
        _, x, h = student_trajectory(
            host, noise[i : i + chunk].to(device), text[i : i + chunk].to(device), steps, shift
        )
        inputs.append(x.transpose(0, 1).cpu())
        hiddens.append(h.transpose(0, 1).cpu())
    return Trajectories(text.cpu(), torch.cat(inputs), torch.cat(hiddens))


@torch.no_grad()
def collect_trajectories(dit, text, n: int, args: TrainArgs, steps: int, shift: float, seed: int, chunk: int = 16):
    """Our synthetic task: -> prompts, Trajectories of all-full student sampling from random prompts and noise."""
    rng = np.random.default_rng([seed, TRAJECTORY_SEED])
    _, prompts, _ = sample_batch(rng, n, args.frames, args.size)
    noise = torch.from_numpy(rng.standard_normal((n, 3, args.frames, args.size, args.size)).astype(np.float32))
    # The word embedding is frozen, so encoding once here equals encoding each training batch.
    emb = torch.cat([text.encode(prompts[i : i + chunk]) for i in range(0, n, chunk)])
    return prompts, record_trajectories(dit, emb, noise, steps, shift, args.device, chunk)


class Discriminator(nn.Module):
    """Scores hidden states token by token (real: the DiT's, fake: the predictor's)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).mean(dim=(1, 2))  # (B,)


def forecast_cache(data: Trajectories, idx, prev, a, s) -> torch.Tensor:
    """TaylorSeer's first-order forecast of hidden[s] from the anchors prev < a (in step index), as the
    runtime computes it (`TaylorForecast`); hidden[a] itself where prev < 0 (a is the first anchor)."""
    cache = data.hiddens[idx, a]
    has_prev = prev >= 0
    slope = (cache - data.hiddens[idx, prev.clamp(min=0)]) / (a - prev).clamp(min=1).view(-1, 1, 1).float()
    return cache + torch.where(has_prev.view(-1, 1, 1), slope * (s - a).view(-1, 1, 1).float(), 0.0)


def previous_anchors(rng, a: torch.Tensor, max_spacing: int) -> torch.Tensor:
    """A previous anchor for each anchor step a, 1..max_spacing steps before it (-1 for a = 0)."""
    spacing = torch.from_numpy(rng.integers(1, max_spacing + 1, len(a)))
    return torch.where(a > 0, (a - torch.minimum(spacing, a)), torch.full_like(a, -1))


def relative_error(pred, base, target) -> torch.Tensor:
    """Mean over samples of pred's squared error divided by base's (a baseline estimate of the same target)."""
    dims = tuple(range(1, pred.ndim))
    err = torch.mean((pred - target) ** 2, dim=dims)
    return torch.mean(err / (torch.mean((base - target) ** 2, dim=dims) + 1e-8))


def final_latents(host, data: Trajectories, idx, sig, device) -> torch.Tensor:
    """The all-full runs' sampled latents (after the last step), which `Trajectories` does not keep."""
    n = data.inputs.shape[1] - 1
    x, h = data.inputs[idx, n].to(device), data.hiddens[idx, n].to(device)
    t = sig[n].to(device).expand(len(idx))
    _, vec, _ = host.embed(x, t, sig[n + 1].to(device).expand(len(idx)), data.text[idx].to(device))
    return x + (sig[n + 1] - sig[n]).to(device) * host.head(h, vec, x, t)


def rollout(host, predictor, data: Trajectories, idx, prev: int, a: int, end: int, sig, device):
    """Sample the cached steps a+1 .. end-1 as deployment does, from the all-full latent after anchor a:
    -> the latent reached at `end` with the predictor on every cached step, and with its input, the
    first-order forecast, alone (no gradient). The predictor's own drift feeds its later steps."""
    text = data.text[idx].to(device)
    x_pred = x_base = data.inputs[idx, a + 1].to(device)
    for s in range(a + 1, end):
        s_ = torch.full((len(idx),), s)
        cache = forecast_cache(data, idx, torch.full_like(s_, prev), torch.full_like(s_, a), s_).to(device)
        t, r = sig[s].to(device).expand(len(idx)), sig[s + 1].to(device).expand(len(idx))
        dt = (sig[s + 1] - sig[s]).to(device)
        tokens, vec, rope = host.embed(x_pred, t, r, text)
        x_pred = x_pred + dt * host.head(predictor(tokens, cache, vec, rope), vec, x_pred, t)
        with torch.no_grad():
            _, vec_b, _ = host.embed(x_base, t, r, text)
            x_base = x_base + dt * host.head(cache, vec_b, x_base, t)
    return x_pred, x_base


def pair_step(host, predictor, data: Trajectories, idx, a, s, sig, device, prev=None):
    """-> predicted and target hidden[s] for runs `idx` (cache hidden[a], or with `prev` the forecast from
    hidden[prev] and hidden[a]), plus (vec, x, t, cache) for the head and the baseline."""
    x = data.inputs[idx, s].to(device)
    cache = data.hiddens[idx, a] if prev is None else forecast_cache(data, idx, prev, a, s)
    cache, target = cache.to(device), data.hiddens[idx, s].to(device)
    t, r = sig[s].to(device), sig[s + 1].to(device)
    with torch.no_grad():
        tokens, vec, rope = host.embed(x, t, r, data.text[idx].to(device))
    return predictor(tokens, cache, vec, rope), target, (vec, x, t, cache)


@torch.no_grad()
def feature_error(
    host, predictor, data: Trajectories, pairs, steps, shift, device="cpu", runs: int = 4, chunk: int = 8
):
    """Mean squared feature error of the predictor over every pair of the first `runs` recorded runs."""
    sig, errors = grid(steps, shift), []
    every = [(i, a, s) for i in range(min(runs, len(data))) for a, s in pairs]
    for k in range(0, len(every), chunk):
        idx, a, s = (torch.tensor(col) for col in zip(*every[k : k + chunk]))
        prev = torch.where(a >= s - a, a - (s - a), -1) if getattr(predictor, "forecast", False) else None
        pred, target, _ = pair_step(host, predictor, data, idx, a, s, sig, device, prev)
        errors.append(torch.mean((pred - target) ** 2, dim=(1, 2)))
    return torch.cat(errors).mean().item()


def fit_predictor(
    out,
    ckpt: Checkpoint,
    host,
    data: Trajectories,
    args: TrainArgs,
    *,
    pairs: list[tuple[int, int]],
    steps: int,
    shift: float,
    velocity_weight: float,
    adversarial: float,
    evaluate,
    start: int,
    extra: dict,
    triples: list[tuple[int, int, int]] | None = None,
    rollout_weight: float = 0.0,
    segments: list[tuple[int, int, int]] | None = None,
):
    """The host-agnostic core: train `ckpt.predictor` to map (embed(x_s), hidden[a]) to hidden[s].

    `host`: anything with embed / trunk / head (frozen here); `ckpt`: what the loop checkpoints to `out`.
    A forecast predictor trains on `triples` (previous anchor, anchor, step) when given; with `rollout_weight`
    also on `segments` (previous anchor, anchor, next anchor) sampled through, as deployment does (`rollout`).
    """
    device = args.device
    host = host.to(device).eval().requires_grad_(False)
    predictor = ckpt.predictor.to(device).train()
    forecast = bool(getattr(predictor, "forecast", False))
    sig = grid(steps, shift)
    disc = Discriminator(data.hiddens.shape[-1]).to(device) if adversarial > 0 else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr) if disc else None

    def loss_fn(step, rng, gen):
        idx = rng.integers(0, len(data), args.batch)
        idx_t = torch.from_numpy(idx)
        if forecast and triples:
            prev, a, s = torch.tensor([triples[k] for k in rng.integers(0, len(triples), args.batch)]).T
        else:
            pair = [pairs[k] for k in rng.integers(0, len(pairs), args.batch)]
            a, s = torch.tensor([p[0] for p in pair]), torch.tensor([p[1] for p in pair])
            prev = previous_anchors(rng, a, max(s_ - a_ for a_, s_ in pairs) + 1) if forecast else None
        pred, target, (vec, x, t, cache) = pair_step(host, predictor, data, idx, a, s, sig, device, prev)
        if forecast:
            # Each sample's error relative to the forecast's own (1 for the untrained predictor): long gaps,
            # whose forecasts are far off, would otherwise outweigh the short ones that deployments run most,
            # and the correction learned for them makes the short ones worse.
            loss = feat = relative_error(pred, cache, target)
            logs = {"feat_rel": feat.item()}
            if velocity_weight:
                with torch.no_grad():
                    v_target, v_cache = host.head(target, vec, x, t), host.head(cache, vec, x, t)
                vel = relative_error(host.head(pred, vec, x, t), v_cache, v_target)
                loss = (loss + velocity_weight * vel) / (1 + velocity_weight)
                logs["vel_rel"] = vel.item()
        else:
            loss = feat = torch.mean((pred - target) ** 2)
            logs = {"feat": feat.item()}
            if velocity_weight:
                vel = torch.mean((host.head(pred, vec, x, t) - host.head(target, vec, x, t)) ** 2)
                loss = loss + velocity_weight * vel
                logs["vel"] = vel.item()
        if rollout_weight and segments:
            # One segment per batch (its cached steps run in lockstep), scored on the latent it ends at: the
            # quantity the next anchor starts from. Per-step errors that add up along the segment cost here.
            prev_, a_, end = segments[rng.integers(0, len(segments))]
            x_pred, x_base = rollout(host, predictor, data, idx_t, prev_, a_, end, sig, device)
            with torch.no_grad():
                target_x = (
                    data.inputs[idx_t, end].to(device) if end < steps else final_latents(host, data, idx_t, sig, device)
                )
            seg = relative_error(x_pred, x_base, target_x)
            loss = (loss + rollout_weight * seg) / (1 + rollout_weight)
            logs["seg_rel"] = seg.item()
        if disc is not None:
            d_loss = torch.relu(1 - disc(target)).mean() + torch.relu(1 + disc(pred.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            loss = loss + adversarial * (-disc(pred).mean())
            logs["d"] = d_loss.item()
        return loss, logs

    return train("predictor", out, ckpt, list(predictor.parameters()), loss_fn, evaluate, args, start, extra)


def _settings(anchors, steps, shift, trajectories, velocity_weight, adversarial, max_gap) -> dict:
    return {
        "anchors": list(anchors),
        "grid_steps": steps,  # not "steps": that key is the optimizer steps of the train args
        "shift": shift,
        "trajectories": trajectories,
        "velocity_weight": velocity_weight,
        "adversarial": adversarial,
        "max_gap": max_gap,
    }


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
    depth: int | None = None,
    forecast: bool = False,
    rollout_weight: float = 0.0,
    modulate: bool = False,
    lists_from=None,
    fine_tune: bool = False,
):
    """Our own distilled student (a disca checkpoint with its word embedding), on the synthetic task.

    `depth` (default: the student's config), `forecast` and `modulate` (`PredictorConfig`) set the predictor;
    `rollout_weight` (forecast only) adds the loss on sampled-through segments (`rollout`).
    `lists_from` (a bundle): train on the anchor lists searched for it (and the schedule), every run of cached
    steps included, instead of the even / warm-up family (`anchor_family`): the lists its deployment runs.
    `fine_tune`: start from the predictor the student checkpoint holds (a predictor run's output), keeping its
    structure (`depth`, `forecast` and `modulate` must then be None / its own)."""
    student = load_checkpoint(student_dir, require_predictor=False)
    if not student.cfg.dit.mean_flow or student.text is None:
        raise CheckpointError(f"{student_dir} is not a distilled student: train it with `disca-train distill`")
    if fine_tune and student.predictor is None:
        raise CheckpointError(f"--fine-tune: {student_dir} holds no predictor; give a `disca-train predictor` output")
    if fine_tune:
        own = student.cfg.predictor
        if (depth not in (None, own.depth)) or forecast != own.forecast or modulate != own.modulate:
            raise ConfigError(
                f"--fine-tune keeps the predictor of {student_dir} (depth {own.depth}, forecast {own.forecast}, "
                f"modulate {own.modulate}): give the same --predictor-depth / --forecast / --modulate, or none"
            )
    if rollout_weight and not forecast:
        raise ConfigError("the rollout loss is for the forecast predictor: add --forecast")
    searched = searched_lists(lists_from, steps, shift) if lists_from is not None else []
    if searched and not forecast:
        raise ConfigError("--lists trains on (previous anchor, anchor, step) triples: it is for --forecast")
    student.cfg.predictor.forecast = forecast
    if forecast:  # the correction on top of the forecast: an untrained predictor is the forecast itself
        student.cfg.predictor.residual = True
    if depth is not None:
        student.cfg.predictor.depth = depth
    student.cfg.predictor.modulate = modulate
    pairs = training_pairs(list(anchors), steps, max_gap)
    resumed = resume_point(out, "predictor")
    if resumed:
        ckpt, start = resumed
        if ckpt.cfg.dit != student.cfg.dit:
            raise CheckpointError(f"{out} belongs to another student than {student_dir}")
        ckpt.dit, ckpt.text = student.dit, student.text
    else:
        torch.manual_seed(args.seed)
        # a fine-tune starts from the checkpoint's (EMA) predictor, as evaluated and exported
        predictor = student.predictor if fine_tune else CachePredictor(student.cfg.dit, student.cfg.predictor)
        ckpt, start = Checkpoint(student.cfg, student.dit, predictor, student.text, {"student": str(student_dir)}), 0
    dit = ckpt.dit.to(args.device).eval().requires_grad_(False)
    text = ckpt.text.to(args.device).eval().requires_grad_(False)
    _, data = collect_trajectories(dit, text, trajectories, args, steps, shift, args.seed)

    def evaluate():
        return eval_student(
            dit, text, args.eval_n, args.frames, args.size, steps, shift, ckpt.predictor, list(anchors), args.device
        )

    extra = _settings(anchors, steps, shift, trajectories, velocity_weight, adversarial, max_gap)
    extra |= {"student": str(student_dir), "rollout_weight": rollout_weight}
    extra |= {"lists_from": str(lists_from) if lists_from is not None else None, "fine_tune": fine_tune}
    # fine-tuned on one bundle's lists alone, the demo's predictor came out 0.24 dB better on them on average
    # (16 clips, 3000 steps) than with the whole family beside them
    family = (
        [check_anchors(list(anchors), steps), *searched]
        if searched
        else anchor_family(steps, list(anchors), max_gap or 4)
    )
    return fit_predictor(
        out,
        ckpt,
        dit,
        data,
        args,
        pairs=pairs,
        steps=steps,
        shift=shift,
        velocity_weight=velocity_weight,
        adversarial=adversarial,
        evaluate=evaluate,
        start=start,
        extra=extra,
        triples=training_triples(family, steps) if forecast else None,
        rollout_weight=rollout_weight,
        # segments longer than the gaps trained for would cost many steps each and serve no budget we run; the
        # searched lists' runs are all kept: deployment runs them
        segments=[seg for seg in training_segments(family, steps) if searched or seg[2] - seg[1] <= (max_gap or 4)],
    )


# ---------------------------------------------------------------- diffusers hosts


def load_text_embeddings(path, text_dim: int) -> torch.Tensor:
    """Text embeddings from a .npy or .safetensors file (one tensor, (L, Dt) or (N, L, Dt)) -> (N, L, Dt) float32."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"text-embedding file {path} does not exist")
    try:
        if path.suffix == ".npy":
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise ConfigError(f"{path} holds {len(tensors)} tensors ({', '.join(tensors)}); expected one")
            arr = next(iter(tensors.values()))
        else:
            raise ConfigError(f"text embeddings must be a .npy or .safetensors file, got {path.name}")
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read text embeddings from {path}: {e}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != text_dim or 0 in arr.shape:
        raise ShapeError(
            f"text embeddings in {path} have shape {tuple(arr.shape)}; the model expects (N, L, {text_dim}) "
            f"(its text_dim is {text_dim})"
        )
    return arr.float()


def host_noise(n: int, channels: int, latent: tuple[int, int, int], seed: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, TRAJECTORY_SEED])
    return torch.from_numpy(rng.standard_normal((n, channels, *latent)).astype(np.float32))


def train_host_predictor(
    out,
    adapter,
    text: torch.Tensor,
    args: TrainArgs,
    *,
    source: str,
    latent: tuple[int, int, int],
    depth: int = 2,
    anchors=tuple(DEFAULT_SCHEDULE.anchors),
    steps: int = 20,
    shift: float = 5.0,
    trajectories: int = 128,
    velocity_weight: float = 1.0,
    adversarial: float = 0.0,
    max_gap: int | None = None,
):
    """A predictor for an adapted diffusers transformer (`disca.models.adapters.adapt` / `load_diffusers`).

    text: (N, L, Dt) embeddings from the host's own text encoder; run i samples from text[i % N] and its
    own noise of latent shape (F, H, W). `out` gets the predictor and a host record (not the host's
    weights), loaded by `disca-export onnx --from diffusers:PATH --predictor OUT`.
    """
    from disca.models.adapters import build_predictor
    from disca.models.adapters.predictor_checkpoint import check_host, host_record
    from disca.models.checkpoint import load_state, read_config
    from disca.runtime.backends.torch_backend import TorchBackend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import DiscaPolicy, FullPolicy

    if text.ndim != 3 or text.shape[-1] != adapter.text_dim:
        raise ShapeError(f"text embeddings must be (N, L, {adapter.text_dim}), got {tuple(text.shape)}")
    if any(d % p for d, p in zip(latent, adapter.patch_size)) or min(latent) < 1:
        raise ShapeError(
            f"latent (F, H, W) {tuple(latent)} must be positive multiples of the patch {adapter.patch_size}"
        )
    pairs = training_pairs(list(anchors), steps, max_gap)
    start = 0
    if (Path(out) / "config.json").is_file():
        meta = read_config(out)
        if meta.get("stage") != "predictor":
            raise CheckpointError(f"{out} holds a {meta.get('stage')!r} run, not 'predictor': choose another --out")
        depth = check_host(meta, adapter, out).predictor.depth
        predictor = build_predictor(adapter, depth)
        load_state(predictor, Path(out) / "predictor.safetensors")  # raw weights: the loop resumes the EMA itself
        start = int(meta["step"])
    elif Path(out).exists() and any(Path(out).iterdir()):
        raise CheckpointError(f"{out} exists and is not a disca checkpoint: choose another --out")
    else:
        torch.manual_seed(args.seed)
        predictor = build_predictor(adapter, depth)
    ckpt = Checkpoint(adapter.model_config(depth), None, predictor, None, {"host": host_record(adapter, source)})

    reps = torch.arange(trajectories) % len(text)
    host = adapter.to(args.device).eval().requires_grad_(False)
    noise = host_noise(trajectories, adapter.in_channels, latent, args.seed)
    data = record_trajectories(host, text[reps], noise, steps, shift, args.device)
    # Held-out check: DisCa vs all-full sampling from fresh noise (no task score exists for a real model).
    held_noise = host_noise(args.eval_n, adapter.in_channels, latent, args.seed + 1).numpy()
    held_text = text[torch.arange(args.eval_n) % len(text)].numpy()

    @torch.no_grad()
    def evaluate():
        from disca.metrics import psnr

        predictor.eval()
        with TorchBackend.from_modules(host, predictor, args.device) as backend:
            full, _ = denoise(backend, held_noise, held_text, steps=steps, shift=shift, policy=FullPolicy())
            cached, _ = denoise(
                backend, held_noise, held_text, steps=steps, shift=shift, policy=DiscaPolicy(list(anchors))
            )
        metrics = {
            "feat_error": feature_error(host, predictor, data, pairs, steps, shift, args.device),
            "psnr_disca_vs_full": psnr(cached, full, data_range=float(np.ptp(full)) or 1.0),
        }
        predictor.train()
        return metrics

    extra = _settings(anchors, steps, shift, trajectories, velocity_weight, adversarial, max_gap)
    extra |= {"latent": list(latent), "text_embeddings": int(len(text))}
    return fit_predictor(
        out,
        ckpt,
        host,
        data,
        args,
        pairs=pairs,
        steps=steps,
        shift=shift,
        velocity_weight=velocity_weight,
        adversarial=adversarial,
        evaluate=evaluate,
        start=start,
        extra=extra,
    )
