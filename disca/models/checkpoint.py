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
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from disca._atomic import atomic_directory
from disca.errors import CheckpointError, ConfigError
from disca.models.config import ModelConfig

FORMAT, VERSION = "disca-checkpoint", 1


@dataclass
class Checkpoint:
    cfg: ModelConfig
    dit: object  # VideoDiT
    predictor: object | None = None  # CachePredictor
    text: object | None = None  # WordEmbedding
    extra: dict = field(default_factory=dict)  # what the trainer stored next to the config


OWN_FILES = ("config.json", "dit.safetensors", "predictor.safetensors", "text.safetensors", "ema.safetensors")
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.\d+\.(?:.*\.tmp|old)$")  # disca._atomic's temporary names


def save_checkpoint(path, cfg: ModelConfig, dit, predictor=None, text=None, extra: dict | None = None, writers=()):
    """Write a checkpoint atomically. `writers`: callables(dir) that add more files (e.g. optimizer state).

    The new directory replaces `path` whole, so an existing `path` may hold only what a checkpoint holds
    (OWN_FILES, what the writers write, and temporaries of those); anything else raises CheckpointError
    and `path` is left as it was."""
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
        _refuse_foreign(Path(path), {*OWN_FILES, *(p.name for p in tmp.iterdir())})
    return Path(path)


def foreign_entries(path: Path, ours) -> list[str]:
    """The entries of the directory `path` outside `ours` (temporaries of ours aside): replacing it deletes them."""
    if not path.is_dir():
        return []
    ours = set(ours)
    return sorted(
        p.name
        for p in path.iterdir()
        if p.name not in ours and not ((m := _TEMPORARY.match(p.name)) and m["name"] in ours)
    )


def _refuse_foreign(path: Path, ours: set) -> None:
    foreign = foreign_entries(path, ours)
    if foreign:
        raise CheckpointError(
            f"not saving the checkpoint {path}: it holds {', '.join(foreign[:5])}, which is not part of a checkpoint "
            "and saving would delete it; move it out of that directory"
        )


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


def _shapes(dit, predictor, text) -> dict:
    """{"dit": {key: shape}, ...}: what each module's file must hold."""
    modules = {"dit": dit, "predictor": predictor, "text": text}
    return {
        m: {k: tuple(v.shape) for k, v in mod.state_dict().items()} for m, mod in modules.items() if mod is not None
    }


def _check_shapes(file: Path, want: dict, exact: bool = False) -> None:
    """The safetensors header of `file` against `want` ({key: shape}), read without loading a tensor.
    `exact`: the same keys (a module's weights); else a subset (the EMA of some parameters)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    unexpected = sorted(have.keys() - want.keys())
    missing = sorted(want.keys() - have.keys()) if exact else []
    if missing or unexpected:
        raise CheckpointError(f"{file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k in have if have[k] != want[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{file} does not match its config: {k} has shape {list(have[k])}, expected {list(want[k])}"
        )
    if not dtypes <= {"F32", "F16", "BF16", "F64"}:
        raise CheckpointError(f"{file} holds non-float tensors ({sorted(dtypes)}); expected float weights")


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
    try:
        cfg = ModelConfig.from_dict(meta.get("model"))
    except ConfigError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    with torch.device("meta"):  # shapes only, nothing allocated: a config must match its files before it costs memory
        shapes = _shapes(*build(cfg), WordEmbedding(cfg.vocab, cfg.dit.text_dim) if cfg.vocab else None)
    for name, want in shapes.items():
        file = path / f"{name}.safetensors"
        if file.is_file():
            _check_shapes(file, want, exact=True)
    if ema and (path / "ema.safetensors").is_file():
        _check_shapes(path / "ema.safetensors", {f"{m}.{k}": v for m, own in shapes.items() for k, v in own.items()})
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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        params = named_parameters(ckpt)
        try:
            values = load_file(str(path / "ema.safetensors"))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {path / 'ema.safetensors'}: {e}") from None
        with torch.no_grad():
            for name, value in values.items():
                if name in params:  # shapes checked above; buffers in the file are not parameters
                    params[name].copy_(value)
    return ckpt
