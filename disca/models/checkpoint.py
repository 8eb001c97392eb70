"""Checkpoints: a directory with `config.json` and safetensors weights (no pickles).

config.json            {"format": "disca-checkpoint", "version": 1, "model": ModelConfig}
dit.safetensors        VideoDiT state dict
predictor.safetensors  CachePredictor state dict (optional: a teacher has none)
"""

from __future__ import annotations

import json
from pathlib import Path

from disca._atomic import atomic_directory
from disca.errors import CheckpointError
from disca.models.config import ModelConfig

FORMAT, VERSION = "disca-checkpoint", 1


def save_checkpoint(path, cfg: ModelConfig, dit, predictor=None, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_directory(path) as tmp:
        meta = {"format": FORMAT, "version": VERSION, "model": cfg.to_dict(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(tmp / "dit.safetensors"))
        if predictor is not None:
            save_file(
                {k: v.contiguous() for k, v in predictor.state_dict().items()}, str(tmp / "predictor.safetensors")
            )
    return Path(path)


def read_config(path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a disca checkpoint: {cfg_file.name} is missing")
    try:
        meta = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{cfg_file} is not a version-{VERSION} disca checkpoint")
    return meta


def load_checkpoint(path, require_predictor: bool = True):
    """-> (ModelConfig, VideoDiT, CachePredictor | None), weights loaded, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from disca.models import build

    path = Path(path)
    cfg = ModelConfig.from_dict(read_config(path)["model"])
    dit, predictor = build(cfg)
    for name, module in (("dit", dit), ("predictor", predictor)):
        file = path / f"{name}.safetensors"
        if not file.is_file():
            if name == "predictor" and not require_predictor:
                predictor = None
                continue
            raise CheckpointError(f"{path}: {file.name} is missing")
        try:
            state = load_file(str(file))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {file}: {e}") from None
        missing, unexpected = module.state_dict().keys() - state.keys(), state.keys() - module.state_dict().keys()
        if missing or unexpected:
            raise CheckpointError(
                f"{file} does not match its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{file} does not match its config: {str(e).splitlines()[-1].strip()}") from None
    return cfg, dit.eval(), predictor.eval() if predictor is not None else None
