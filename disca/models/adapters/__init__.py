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
    return _entry(type(model).__name__)[0](model, mean_flow=mean_flow, **kwargs)


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
        class_name = json.loads(config.read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config} is not valid JSON: {e}") from None
    if class_name is None:
        raise ConfigError(f"{config} names no model class (_class_name)")
    _entry(class_name)
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        model = cls.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        # diffusers needs `accelerate` to load models that keep some modules in fp32 (Wan does).
        hint = "; install `accelerate`" if "low_cpu_mem_usage" in str(e) else ""
        raise CheckpointError(f"cannot load {class_name} from {path}: {e}{hint}") from None
    adapter = adapt(model.eval(), mean_flow=mean_flow, **kwargs)
    return adapter, build_predictor(adapter, predictor_depth)
