"""One plain PyTorch training loop for every stage: AdamW, warmup, gradient clipping,
atomic resumable checkpoints, a rich progress bar (loss, samples/s), and a
periodic evaluation line. DDP-ready: nothing here assumes a single process
except the writer (wrap the model, write from rank 0).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from disca.models.checkpoint import Checkpoint, named_parameters
from disca.training.state import load_ema, load_optimizer, save_state, step_generators


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
) -> dict:
    """Run steps start_step..args.steps-1; checkpoint to `out`; -> the last evaluation metrics."""
    console = console or Console(stderr=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    if start_step > 0:
        restored = load_optimizer(out, opt)
        note = "" if restored else " (no optimizer state saved: a fresh optimizer)"
        console.print(f"resuming {stage} from step {start_step} in {out}{note}")
    ema = _init_ema(out, ckpt, params, args.ema, start_step)
    train_args = {**args.to_dict(), **(extra_args or {})}
    metrics = ckpt.extra.get("metrics", {})
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
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            rng, gen = step_generators(args.seed, step, args.device)
            loss, logs = loss_fn(step, rng, gen)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{stage}: loss is {loss.item()} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(list(ema.values()), [p.detach() for p in params], 1 - args.ema)
            ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
            now = time.perf_counter()
            rate = args.batch / max(now - t_last, 1e-9)
            t_last = now
            extra = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
            info = f"loss {ema_loss:.4f} {extra} | {rate:.1f} samples/s"
            progress.update(task, advance=1, info=info)
            if not console.is_terminal and (step + 1) % 25 == 0:  # a log file gets plain lines instead of a bar
                console.print(f"{stage} step {step + 1}/{args.steps}: {info}")
            last = step + 1 == args.steps
            if (args.eval_every and (step + 1) % args.eval_every == 0) or last:
                with _swapped(params, ema):
                    metrics = {"step": step + 1, **evaluate()}
                console.print(f"[cyan]eval[/cyan] {stage} step {step + 1}: " + _fmt(metrics))
            if (step + 1) % args.ckpt_every == 0 or last:
                save_state(out, ckpt, opt, stage, step + 1, train_args, metrics, ema)
    return metrics


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
