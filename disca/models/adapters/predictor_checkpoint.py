"""Predictor checkpoints trained on a diffusers host: the predictor alone, plus a record of its host.

The directory is an ordinary disca checkpoint (`config.json` + safetensors,
written atomically by the training loop) without `dit.safetensors`: the host's
weights stay in its diffusers directory. `config.json` carries

    "model": the adapter's widths (ModelConfig, as in the bundle manifest)
    "host":  {"class": "WanTransformer3DModel", "source": "...", "mean_flow": null}

so that loading against another host (other class or widths) fails with a
message instead of a shape error deep in `load_state_dict`.
"""

from __future__ import annotations

from pathlib import Path

from disca.errors import CheckpointError, ConfigError
from disca.models.config import ModelConfig


def host_record(adapter, source: str) -> dict:
    """What a predictor checkpoint stores about the host it was trained on."""
    return {
        "class": type(adapter.model).__name__,
        "source": str(source),
        "mean_flow": adapter.time_combine if adapter.r_embedder is not None else None,
    }


def check_host(meta: dict, adapter, path) -> ModelConfig:
    """The checkpoint's ModelConfig, after checking it was trained on a host like `adapter`."""
    host = meta.get("host")
    if not isinstance(host, dict):
        raise CheckpointError(
            f"{path} is not a predictor trained on a diffusers model (no host record): "
            "train one with `disca-train predictor --from diffusers:PATH`"
        )
    cls = type(adapter.model).__name__
    if host.get("class") != cls:
        raise CheckpointError(f"{path} was trained on a {host.get('class')}, not on this {cls}")
    try:
        cfg = ModelConfig.from_dict(meta.get("model"))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    want = adapter.model_config(predictor_depth=cfg.predictor.depth)
    if cfg.dit != want.dit:
        diff = {k: (v, getattr(want.dit, k)) for k, v in cfg.dit.__dict__.items() if getattr(want.dit, k) != v}
        details = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path} was trained on another {cls} (checkpoint vs this model: {details})")
    return cfg


def load_predictor_checkpoint(path, adapter, ema: bool = True):
    """The trained predictor in `path` for `adapter`'s host, in eval mode (EMA weights where the run kept them)."""
    import torch

    from disca.models.adapters import build_predictor
    from disca.models.checkpoint import load_state, read_config

    path = Path(path)
    meta = read_config(path)
    cfg = check_host(meta, adapter, path)
    file = path / "predictor.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{path}: {file.name} is missing")
    predictor = build_predictor(adapter, cfg.predictor.depth)
    load_state(predictor, file)
    if ema and (path / "ema.safetensors").is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        params = dict(predictor.named_parameters())
        try:
            values = load_file(str(path / "ema.safetensors"))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {path / 'ema.safetensors'}: {e}") from None
        with torch.no_grad():  # the training loop keys EMA tensors "<module>.<param>"
            for name, value in values.items():
                own = params.get(name.removeprefix("predictor.")) if name.startswith("predictor.") else None
                if own is None:
                    continue
                if own.shape != value.shape:  # copy_ would broadcast a smaller tensor over the weight
                    raise CheckpointError(
                        f"{path / 'ema.safetensors'}: {name} has shape {list(value.shape)}, expected {list(own.shape)}"
                    )
                own.copy_(value)
    return predictor.eval()
