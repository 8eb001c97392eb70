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

from disca._atomic import check_writable
from disca.errors import CheckpointError
from disca.models.checkpoint import (
    OWN_FILES,
    Checkpoint,
    foreign_entries,
    load_checkpoint,
    read_config,
    save_checkpoint,
)

LOG, BEST = "log.jsonl", "best"
OPTIMIZER = ("optimizer.safetensors", "optimizer.json")
RUN_FILES = (*OWN_FILES, *OPTIMIZER, LOG, BEST)  # all a training run keeps in its --out


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
    check_out(out, {})  # the library's callers too: refused before the run, not at its first checkpoint
    if not (out / "config.json").is_file():
        if out.exists() and any(p.name not in (LOG, BEST) for p in out.iterdir()):  # a run stopped before its
            # first checkpoint leaves only these
            raise CheckpointError(f"{out} exists and is not a disca checkpoint: choose another --out")
        return None
    meta = read_config(out)
    if meta.get("stage") != stage:
        raise CheckpointError(f"{out} holds a {meta.get('stage')!r} run, not {stage!r}: choose another --out")
    return load_checkpoint(out, require_predictor=stage == "predictor", ema=False), int(meta["step"])


def check_out(out, inputs: dict) -> None:
    """Refuse, before any work, an --out whose checkpoints would replace something else: every save replaces the
    directory whole. `inputs`: {option: path} of the directories the run reads (e.g. {"--teacher": path})."""
    out = Path(out)
    check_writable(out, "checkpoint directory (--out)", directory=True)
    here = out.resolve()
    for option, path in inputs.items():
        if path is None:
            continue
        path = Path(path).resolve()
        if path == here:
            raise CheckpointError(f"--out {out} is {option} itself: choose another --out")
        if here in path.parents:
            raise CheckpointError(
                f"{option} {path} is inside --out {out}, whose checkpoints would delete it: choose another --out"
            )
    for parent in here.parents:
        if _is_checkpoint(parent):
            raise CheckpointError(
                f"--out {out} is inside the checkpoint {parent}, whose next save would delete it: "
                "choose a directory outside it"
            )
    if not out.is_dir():
        return
    foreign = foreign_entries(out, RUN_FILES)
    if (out / BEST).exists() and not (out / BEST / "config.json").is_file():
        foreign.append(BEST)  # not a best/ of ours: the next checkpoint would not carry it along
    elif (out / BEST).exists():
        foreign += [f"{BEST}/{name}" for name in foreign_entries(out / BEST, OWN_FILES)]
    if not foreign:
        return
    nested = [name for name in foreign if _is_checkpoint(out / name)]
    if not nested and not (out / "config.json").is_file():
        raise CheckpointError(f"{out} exists and is not a disca checkpoint: choose another --out")
    what = f"the checkpoint {out / nested[0]}" if nested else ", ".join(str(out / name) for name in foreign[:3])
    raise CheckpointError(
        f"--out {out} holds {what}, which its next checkpoint would delete: move it out or choose another --out"
    )


def _is_checkpoint(path: Path) -> bool:
    try:
        read_config(path)
    except CheckpointError:
        return False
    return True
