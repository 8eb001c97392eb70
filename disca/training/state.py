"""Resumable training state: a checkpoint directory plus the optimizer, written atomically.

    out/config.json  {"model": ..., "stage": "teacher", "step": 1200, "train": {args}, "metrics": {...}}
    out/*.safetensors model weights (the same layout as any disca checkpoint)
    out/optimizer.safetensors + out/optimizer.json   optimizer state (tensors, then plain data)
    out/log.jsonl, out/best/   the run's log and best evaluated weights (see loop.py), carried from one
                               checkpoint to the next

Per-step randomness is derived from (seed, step), so a resumed run continues
exactly where an uninterrupted one would have gone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from disca.errors import CheckpointError
from disca.models.checkpoint import Checkpoint, load_checkpoint, read_config, save_checkpoint

LOG, BEST = "log.jsonl", "best"


def step_generators(seed: int, step: int, device="cpu"):
    """(numpy Generator, torch Generator) for one training step."""
    import numpy as np

    g = torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % (2**63))
    return np.random.default_rng([seed, step]), g


def _optimizer_writer(opt: torch.optim.Optimizer):
    from safetensors.torch import save_file

    def write(dir_path: Path) -> None:
        state = opt.state_dict()
        tensors = {
            f"{idx}.{key}": (val if torch.is_tensor(val) else torch.tensor(val)).contiguous().cpu()
            for idx, entry in state["state"].items()
            for key, val in entry.items()
        }
        save_file(tensors, str(dir_path / "optimizer.safetensors"))
        (dir_path / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"]}))

    return write


def _ema_writer(ema: dict):
    from safetensors.torch import save_file

    def write(dir_path: Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(dir_path / "ema.safetensors"))

    return write


def _carry_writer(out):
    """Bring the run's log and best/ into the new checkpoint directory (best/ hard-linked: no copy)."""
    out = Path(out)

    def write(dir_path: Path) -> None:
        if (out / LOG).is_file():
            shutil.copy2(out / LOG, dir_path / LOG)
        if (out / BEST / "config.json").is_file():
            shutil.copytree(out / BEST, dir_path / BEST, copy_function=_link_or_copy)

    return write


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def save_state(out, ckpt: Checkpoint, opt, stage: str, step: int, train_args: dict, metrics, ema=None):
    extra = {**ckpt.extra, "stage": stage, "step": step, "train": train_args, "metrics": metrics}
    writers = [_optimizer_writer(opt), _carry_writer(out)] + ([_ema_writer(ema)] if ema else [])
    save_checkpoint(out, ckpt.cfg, ckpt.dit, ckpt.predictor, ckpt.text, extra=extra, writers=writers)


def load_ema(out, names: list[str]) -> dict | None:
    """The EMA tensors saved in `out` for these parameter names, or None."""
    from safetensors.torch import load_file

    file = Path(out) / "ema.safetensors"
    if not file.is_file():
        return None
    saved = load_file(str(file))
    return {n: saved[n] for n in names} if all(n in saved for n in names) else None


def load_optimizer(out, opt: torch.optim.Optimizer) -> bool:
    """Restore the optimizer saved in `out`. -> False if `out` has none (weights-only checkpoint)."""
    from safetensors.torch import load_file

    out = Path(out)
    if not (out / "optimizer.safetensors").is_file():
        return False
    try:
        tensors = load_file(str(out / "optimizer.safetensors"))
        groups = json.loads((out / "optimizer.json").read_text())["param_groups"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {out}: optimizer state unreadable ({e})") from None
    state: dict = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": groups})
    return True


def resume_point(out, stage: str) -> tuple[Checkpoint, int] | None:
    """The checkpoint and step to resume a `stage` run in `out` from, or None for a fresh run."""
    out = Path(out)
    if not (out / "config.json").is_file():
        if out.exists() and any(p.name not in (LOG, BEST) for p in out.iterdir()):  # a run stopped before its
            # first checkpoint leaves only these
            raise CheckpointError(f"{out} exists and is not a disca checkpoint: choose another --out")
        return None
    meta = read_config(out)
    if meta.get("stage") != stage:
        raise CheckpointError(f"{out} holds a {meta.get('stage')!r} run, not {stage!r}: choose another --out")
    return load_checkpoint(out, require_predictor=stage == "predictor", ema=False), int(meta["step"])
