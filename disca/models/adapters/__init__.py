"""Real video DiTs from diffusers behind the embed / trunk / head split (needs the `diffusers` package).

    adapter = adapt(WanTransformer3DModel.from_pretrained(...))     # or HunyuanVideoTransformer3DModel
    predictor = build_predictor(adapter, depth=2)
    FullGraph(adapter), PredictorGraph(adapter, predictor)            # what gets exported and run

or in one call from a local diffusers directory: `load_diffusers(path)`. A
predictor trained on the host (`disca.training.predictor.train_host_predictor`,
`disca-train predictor --from diffusers:PATH`) loads with
`load_predictor_checkpoint(dir, adapter)`. The
adapters call the host's own submodules; no model code is copied here. The
official DisCa (Tencent-Hunyuan) checkpoint layout loads with
`official_disca.load_official_disca`.
"""

from __future__ import annotations

import json
from pathlib import Path

from disca.errors import CheckpointError, ConfigError
from disca.models.adapters._common import DiffusersAdapter, FusionPredictor
from disca.models.adapters.diffusers_hunyuan import HunyuanVideoAdapter, HunyuanVideoPredictor, pack_text
from disca.models.adapters.diffusers_wan import WanAdapter, WanPredictor
from disca.models.adapters.predictor_checkpoint import load_predictor_checkpoint

# diffusers class name -> (adapter, predictor). Matched by exact class: a subclass (e.g. Wan VACE) differs.
SUPPORTED = {
    "WanTransformer3DModel": (WanAdapter, WanPredictor),
    "HunyuanVideoTransformer3DModel": (HunyuanVideoAdapter, HunyuanVideoPredictor),
}

__all__ = [
    "SUPPORTED",
    "DiffusersAdapter",
    "FusionPredictor",
    "HunyuanVideoAdapter",
    "HunyuanVideoPredictor",
    "WanAdapter",
    "WanPredictor",
    "adapt",
    "build_predictor",
    "load_diffusers",
    "load_predictor_checkpoint",
    "pack_text",
]


def _entry(class_name: str):
    if class_name not in SUPPORTED:
        raise ConfigError(f"unsupported model class {class_name!r}; DisCa adapters exist for: {', '.join(SUPPORTED)}")
    return SUPPORTED[class_name]


def adapt(model, mean_flow: str | None = None, **kwargs) -> DiffusersAdapter:
    """Wrap a diffusers transformer instance. `kwargs` go to the adapter (e.g. `guidance` for HunyuanVideo)."""
    entry = _entry(type(model).__name__)
    blocks = getattr(model, "blocks", None)  # Wan; HunyuanVideo's are `transformer_blocks`
    blocks = getattr(model, "transformer_blocks", None) if blocks is None else blocks
    if blocks is not None and len(blocks) == 0:  # its config asked for none: nothing to split or to copy
        raise ConfigError(f"this {type(model).__name__} has no transformer blocks (check num_layers in its config)")
    return entry[0](model, mean_flow=mean_flow, **kwargs)


def build_predictor(adapter: DiffusersAdapter, depth: int = 2) -> FusionPredictor:
    """A fresh cache predictor sized for the adapter's host (hidden size, heads, block type)."""
    if depth < 1:
        raise ConfigError(f"predictor depth must be >= 1, got {depth}")
    return _entry(type(adapter.model).__name__)[1](adapter, depth)


def load_diffusers(path, *, predictor_depth: int = 2, mean_flow: str | None = None, torch_dtype=None, **kwargs):
    """A transformer from a local diffusers directory (config.json + safetensors) -> (adapter, predictor).

    The predictor is freshly initialised: a trained one comes from `load_predictor_checkpoint`.
    """
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path} is not a diffusers model directory: no config.json")
    try:
        meta = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{config} is not readable JSON: {e}") from None
    class_name = meta.get("_class_name") if isinstance(meta, dict) else None
    if not isinstance(class_name, str):
        raise ConfigError(f"{config} names no model class (a JSON object with a _class_name string)")
    _entry(class_name)
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        # safetensors only: a pickled .bin in a downloaded directory would run code on load
        model = cls.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError, IndexError, KeyError, AttributeError) as e:
        # a config.json of wrong types reaches diffusers' constructors; diffusers needs `accelerate` to load
        # models that keep some modules in fp32 (Wan does)
        hint = "; install `accelerate`" if "low_cpu_mem_usage" in str(e) else ""
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load {class_name} from {path}: {first}{hint}") from None
    adapter = adapt(model.eval(), mean_flow=mean_flow, **kwargs)
    return adapter, build_predictor(adapter, predictor_depth)
