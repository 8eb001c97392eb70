"""Checkpoints: a directory with `config.json` and safetensors weights (no pickles).

    config.json            {"format": "disca-checkpoint", "version": 1, "model": ModelConfig, ...extra}
    dit.safetensors        VideoDiT state dict
    predictor.safetensors  CachePredictor state dict (optional: a teacher has none)
    text.safetensors       WordEmbedding state dict (when the config has a vocabulary)
    ema.safetensors        exponential moving average of the trained parameters, keyed "<module>.<param>"
                           (training runs with --ema; loaded in place of the raw weights by default)

Written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from disca._atomic import atomic_directory
from disca.errors import CheckpointError
from disca.models.config import ModelConfig

FORMAT, VERSION = "disca-checkpoint", 1


@dataclass
class Checkpoint:
    cfg: ModelConfig
    dit: object  # VideoDiT
    predictor: object | None = None  # CachePredictor
    text: object | None = None  # WordEmbedding
    extra: dict = field(default_factory=dict)  # what the trainer stored next to the config


def save_checkpoint(path, cfg: ModelConfig, dit, predictor=None, text=None, extra: dict | None = None, writers=()):
    """Write a checkpoint atomically. `writers`: callables(dir) that add more files (e.g. optimizer state)."""
    from safetensors.torch import save_file

    with atomic_directory(path) as tmp:
        meta = {"format": FORMAT, "version": VERSION, "model": cfg.to_dict(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        for name, module in (("dit", dit), ("predictor", predictor), ("text", text)):
            if module is not None:
                state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
                save_file(state, str(tmp / f"{name}.safetensors"))
        for write in writers:
            write(tmp)
    return Path(path)


def read_config(path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a disca checkpoint: {cfg_file.name} is missing")
    try:
        meta = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{cfg_file} is not a version-{VERSION} disca checkpoint")
    return meta


def load_state(module, file: Path) -> None:
    """Load a safetensors state dict into `module`, naming the keys that do not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    own = module.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise CheckpointError(f"{file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{file} does not match its config: {str(e).splitlines()[-1].strip()}") from None


def named_parameters(ckpt: Checkpoint) -> dict:
    """{"dit.blocks.0.linear1.weight": param, ...} over the checkpoint's modules."""
    modules = {"dit": ckpt.dit, "predictor": ckpt.predictor, "text": ckpt.text}
    return {f"{m}.{n}": p for m, module in modules.items() if module is not None for n, p in module.named_parameters()}


def load_checkpoint(path, require_predictor: bool = True, ema: bool = True) -> Checkpoint:
    """Weights loaded (the EMA weights where the run kept them, unless ema=False), modules in eval mode."""
    from disca.models import build
    from disca.models.text import WordEmbedding

    path = Path(path)
    meta = read_config(path)
    cfg = ModelConfig.from_dict(meta["model"])
    dit, predictor = build(cfg)
    text = WordEmbedding(cfg.vocab, cfg.dit.text_dim) if cfg.vocab else None
    for name, module in (("dit", dit), ("predictor", predictor), ("text", text)):
        if module is None:
            continue
        file = path / f"{name}.safetensors"
        if not file.is_file():
            if name == "predictor" and not require_predictor:
                predictor = None
                continue
            raise CheckpointError(f"{path}: {file.name} is missing")
        load_state(module, file)
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "model")}
    eval_ = lambda m: m.eval() if m is not None else None  # noqa: E731
    ckpt = Checkpoint(cfg, dit.eval(), eval_(predictor), eval_(text), extra)
    if ema and (path / "ema.safetensors").is_file():
        from safetensors.torch import load_file

        params = named_parameters(ckpt)
        with torch.no_grad():
            for name, value in load_file(str(path / "ema.safetensors")).items():
                if name in params:
                    params[name].copy_(value)
    return ckpt
