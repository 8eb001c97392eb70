"""One plain PyTorch training loop for every stage: AdamW, warmup, gradient clipping,
atomic resumable checkpoints, a rich progress bar (loss, samples/s), and a
periodic evaluation line. DDP-ready: nothing here assumes a single process
except the writer (wrap the model, write from rank 0).

What a run leaves in `out/`:
    log.jsonl   one JSON line per step (loss, lr, gradient norm, the stage's own terms) and per evaluation
    best/       the evaluated (EMA) weights that scored best so far, a weights-only checkpoint
and the run stops with a DivergenceError when a guarded term (the loss, a target's norm) blows up.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from disca.errors import DiscaError
from disca.models.checkpoint import Checkpoint, named_parameters, save_checkpoint
from disca.training.state import BEST, LOG, load_ema, load_optimizer, save_state, step_generators


class DivergenceError(DiscaError):
    """A training run blew up: its loss or a guarded term left the range it started in."""


@dataclass
class TrainArgs:
    steps: int = 2000
    batch: int = 8
    lr: float = 3e-4
    warmup: int = 100  # linear learning-rate warmup steps
    grad_clip: float = 1.0
    seed: int = 0
    frames: int = 8  # clip size of the synthetic task
    size: int = 32
    ckpt_every: int = 100
    eval_every: int = 500  # 0: only at the end
    eval_n: int = 16  # clips in the evaluation set (fixed prompts and seeds)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); evaluated and exported
    guard: float = 20.0  # stop when a guarded term exceeds this many times its early level (0: off)
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def train(
    stage: str,
    out,
    ckpt: Checkpoint,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[int, object, torch.Generator], tuple[torch.Tensor, dict]],
    evaluate: Callable[[], dict],
    args: TrainArgs,
    start_step: int = 0,
    extra_args: dict | None = None,
    console: Console | None = None,
    guard_keys: tuple[str, ...] = (),
) -> dict:
    """Run steps start_step..args.steps-1; checkpoint to `out`; -> the last evaluation metrics.

    `loss_fn` -> (loss, {name: float}): the names are logged every step; those in `guard_keys`
    (and the loss) are watched by the divergence guard.
    """
    console = console or Console(stderr=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    if start_step > 0:
        restored = load_optimizer(out, opt)
        note = "" if restored else " (no optimizer state saved: a fresh optimizer)"
        console.print(f"resuming {stage} from step {start_step} in {out}{note}")
    ema = _init_ema(out, ckpt, params, args.ema, start_step)
    train_args = {**args.to_dict(), **(extra_args or {})}
    metrics = ckpt.extra.get("metrics", {})
    log = RunLog(out, start_step)
    guard = Guard(args.guard, ("loss", *guard_keys))
    best = _best_score(out) if start_step > 0 else None
    progress = Progress(
        TextColumn(f"[bold]{stage}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(stage, total=args.steps, completed=start_step, info="")
        t_last, ema_loss = time.perf_counter(), None
        for step in range(start_step, args.steps):
            lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            for group in opt.param_groups:
                group["lr"] = lr
            rng, gen = step_generators(args.seed, step, args.device)
            loss, logs = loss_fn(step, rng, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip).item()  # before clipping
            record = {"loss": loss.item(), **logs}
            problem = guard.check(record)
            if problem:
                log.write({"step": step + 1, "lr": lr, "grad_norm": grad_norm, **record, "diverged": problem})
                best_note = f" and the best in {Path(out) / BEST}" if (Path(out) / BEST).is_dir() else ""
                raise DivergenceError(
                    f"{stage} diverged at step {step + 1}: {problem}. The last checkpoint in {out}{best_note} is "
                    "kept: resume from it with a lower --lr (--guard 0 stops only on values that are not finite)"
                )
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(list(ema.values()), [p.detach() for p in params], 1 - args.ema)
            ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
            now = time.perf_counter()
            rate = args.batch / max(now - t_last, 1e-9)
            log.write({"step": step + 1, "lr": lr, "grad_norm": grad_norm, **record, "sec": now - t_last})
            t_last = now
            extra = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k in ("mse", *guard_keys))
            info = f"loss {ema_loss:.4f} {extra} | {rate:.1f} samples/s"
            progress.update(task, advance=1, info=info)
            if not console.is_terminal and (step + 1) % 25 == 0:  # a log file gets plain lines instead of a bar
                console.print(f"{stage} step {step + 1}/{args.steps}: {info}")
            last = step + 1 == args.steps
            if (args.eval_every and (step + 1) % args.eval_every == 0) or last:
                with _swapped(params, ema):
                    metrics = {"step": step + 1, **evaluate()}
                    score = _score(metrics)
                    note = ""
                    if score is not None and (best is None or score >= best):  # ties: the later, longer-trained
                        best = score
                        # The weights just evaluated (EMA), without optimizer state: load, export or resume from it.
                        save_checkpoint(
                            Path(out) / BEST, ckpt.cfg, ckpt.dit, ckpt.predictor, ckpt.text,
                            extra={**ckpt.extra, "stage": stage, "step": step + 1, "train": train_args,
                                   "metrics": metrics},
                        )  # fmt: skip
                        note = " (best: saved)"
                log.write({"eval": metrics})
                console.print(f"[cyan]eval[/cyan] {stage} step {step + 1}: " + _fmt(metrics) + note)
                t_last = time.perf_counter()  # the evaluation is not a training step's time
            if (step + 1) % args.ckpt_every == 0 or last:
                save_state(out, ckpt, opt, stage, step + 1, train_args, metrics, ema)
    return metrics


class RunLog:
    """`out/log.jsonl`: one line per step and per evaluation, appended (the checkpoint writer carries it along).

    A resumed run drops the lines of steps after its checkpoint, so that the log reads as one run.
    """

    def __init__(self, out, start_step: int):
        self.path = Path(out) / LOG
        kept = []
        if start_step > 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if rec.get("step", rec.get("eval", {}).get("step", 0)) <= start_step:
                    kept.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:  # reopened every time: the checkpoint writer may have moved the directory
            f.write(json.dumps(record, default=float) + "\n")


class Guard:
    """Divergence guard: a watched term that is not finite, or whose smoothed value climbs `factor` times above
    its lowest smoothed level, stops the run (a slow drift is the evaluation's job, a blow-up is this one's)."""

    SMOOTH, WARM = 0.9, 20  # EMA of the watched values; steps before the lowest level counts

    def __init__(self, factor: float, keys: tuple[str, ...]):
        self.factor, self.keys = factor, keys
        self.smooth: dict[str, float] = {}
        self.low: dict[str, float] = {}
        self.n = 0

    def check(self, record: dict) -> str | None:
        """-> None, or what diverged, in words."""
        self.n += 1
        for k in self.keys:
            if k not in record:
                continue
            v = float(record[k])
            if not math.isfinite(v):
                return f"{k} is {v}"
            if not self.factor:
                continue
            s = self.smooth[k] = v if k not in self.smooth else self.SMOOTH * self.smooth[k] + (1 - self.SMOOTH) * v
            if self.n < self.WARM:
                continue
            low = self.low[k] = min(self.low.get(k, s), s)
            if s > self.factor * low and s > 1e-6:
                return f"{k} rose to {s:.3g} (smoothed), {s / low:.0f}x its lowest level {low:.3g}"
        return None


BEST_BY = ("adherence_disca", "adherence_full", "adherence", "psnr_disca_vs_full")  # all: higher is better


def _score(metrics: dict) -> float | None:
    """What `best/` ranks by: the first of BEST_BY the stage evaluates (DisCa sampling's adherence for a
    predictor, all-full adherence for a student); None: no best/ for this stage."""
    for k in BEST_BY:
        if isinstance(metrics.get(k), float | int):
            return float(metrics[k])
    return None


def _best_score(out) -> float | None:
    try:
        return _score(json.loads((Path(out) / BEST / "config.json").read_text()).get("metrics", {}))
    except (OSError, ValueError):
        return None


def _init_ema(out, ckpt: Checkpoint, params, decay: float, start_step: int) -> dict | None:
    """{param name: EMA tensor} (resumed from `out` when it has one), or None when EMA is off."""
    if not decay:
        return None
    names = {id(p): n for n, p in named_parameters(ckpt).items()}
    keys = [names[id(p)] for p in params]
    saved = load_ema(out, keys) if start_step > 0 else None
    if saved is not None:
        return {k: saved[k].to(p.device) for k, p in zip(keys, params)}
    return {k: p.detach().clone() for k, p in zip(keys, params)}


@contextlib.contextmanager
def _swapped(params, ema: dict | None):
    """Evaluate with the EMA weights, then put the raw ones back."""
    if ema is None:
        yield
        return
    raw = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema.values()):
            p.copy_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, r in zip(params, raw):
                p.copy_(r)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "step")
