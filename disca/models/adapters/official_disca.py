"""Load the official DisCa release (Tencent-Hunyuan/DisCa) into the HunyuanVideo adapter and predictor.

The layout below was checked against the release's own source (GitHub
Tencent-Hunyuan/DisCa, `disca_t2v_hyvideo10/`): `hyvideo/disca_utils/predictor.py`,
`hyvideo/modules/models.py`, `hyvideo/modules/embed_layers.py`,
`sample_video_disca.py` and `hyvideo/inference.py`. The weights use the
original HunyuanVideo-1.0 key layout:
- DiT: HunyuanVideo's keys (`img_in`, `txt_in.*`, `time_in`, `vector_in`,
  `guidance_in`, `double_blocks.N.*`, `single_blocks.N.*`, `final_layer.*`)
  plus the mean-flow r embedder `time_r_in.mlp.{0,2}.*` (a TimestepEmbedder
  like `time_in`: Linear(256 -> H), SiLU, Linear(H -> H));
- predictor: `fusion_mlp.{0,2}.*` (nn.Sequential: Linear 2H -> H, SiLU,
  Linear H -> H) and `mm_single_blocks.N.*` (HunyuanVideo single-stream
  blocks: linear1, linear2, q_norm, k_norm, modulation.linear; 2 by default).

The official loaders also accept two other spellings, and so do we: a
predictor whose keys all carry a `module.predictor.`, `predictor.` or `module.`
prefix (training wrappers), and the "tensor-parallel" layout with fused
projections stored split (`{img,txt}_attn_{q,k,v}`, `linear1_{q,k,v,mlp}`,
`linear2.fc`).

Fused projections are split (qkv -> q, k, v; single-block linear1 -> q, k, v,
mlp) and the final layer's (shift, scale) modulation is reordered to diffusers'
(scale, shift). The mapping is written for any hidden size (diffusers' own
converter hard-codes 3072).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from disca.errors import CheckpointError, ConfigError

_R_EMBEDDER = {"time_r_in.mlp.0.": "r_embedder.linear_1.", "time_r_in.mlp.2.": "r_embedder.linear_2."}

_PREFIXES = {  # official prefix -> diffusers prefix (outside the numbered blocks)
    "img_in.proj.": "x_embedder.proj.",
    "time_in.mlp.0.": "time_text_embed.timestep_embedder.linear_1.",
    "time_in.mlp.2.": "time_text_embed.timestep_embedder.linear_2.",
    "guidance_in.mlp.0.": "time_text_embed.guidance_embedder.linear_1.",
    "guidance_in.mlp.2.": "time_text_embed.guidance_embedder.linear_2.",
    "vector_in.in_layer.": "time_text_embed.text_embedder.linear_1.",
    "vector_in.out_layer.": "time_text_embed.text_embedder.linear_2.",
    "txt_in.input_embedder.": "context_embedder.proj_in.",
    "txt_in.t_embedder.mlp.0.": "context_embedder.time_text_embed.timestep_embedder.linear_1.",
    "txt_in.t_embedder.mlp.2.": "context_embedder.time_text_embed.timestep_embedder.linear_2.",
    "txt_in.c_embedder.linear_1.": "context_embedder.time_text_embed.text_embedder.linear_1.",
    "txt_in.c_embedder.linear_2.": "context_embedder.time_text_embed.text_embedder.linear_2.",
    "final_layer.linear.": "proj_out.",
}

# Inside a numbered block: official sub-path -> diffusers sub-path, or a tuple of targets the tensor is split into
# along dim 0 ("qkv": three equal parts; single-block linear1: q, k, v of H rows each, then the MLP rows).
_REFINER = {
    "norm1": "norm1",
    "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "self_attn_proj": "attn.to_out.0",
    "norm2": "norm2",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm_out.linear",
}
_DOUBLE = {
    "img_mod.linear": "norm1.linear",
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_q": "attn.to_q",  # the tensor-parallel (split) spelling of img_attn_qkv
    "img_attn_k": "attn.to_k",
    "img_attn_v": "attn.to_v",
    "img_attn_q_norm": "attn.norm_q",
    "img_attn_k_norm": "attn.norm_k",
    "img_attn_proj": "attn.to_out.0",
    "img_mlp.fc1": "ff.net.0.proj",
    "img_mlp.fc2": "ff.net.2",
    "txt_mod.linear": "norm1_context.linear",
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_q": "attn.add_q_proj",
    "txt_attn_k": "attn.add_k_proj",
    "txt_attn_v": "attn.add_v_proj",
    "txt_attn_q_norm": "attn.norm_added_q",
    "txt_attn_k_norm": "attn.norm_added_k",
    "txt_attn_proj": "attn.to_add_out",
    "txt_mlp.fc1": "ff_context.net.0.proj",
    "txt_mlp.fc2": "ff_context.net.2",
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear1_q": "attn.to_q",  # the tensor-parallel (split) spelling of linear1 and linear2
    "linear1_k": "attn.to_k",
    "linear1_v": "attn.to_v",
    "linear1_mlp": "proj_mlp",
    "linear2": "proj_out",
    "linear2.fc": "proj_out",
    "q_norm": "attn.norm_q",
    "k_norm": "attn.norm_k",
    "modulation.linear": "norm.linear",
}
_BLOCKS = {  # official block list -> (diffusers block list, sub-path table)
    "txt_in.individual_token_refiner.blocks": ("context_embedder.token_refiner.refiner_blocks", _REFINER),
    "double_blocks": ("transformer_blocks", _DOUBLE),
    "single_blocks": ("single_transformer_blocks", _SINGLE),
}
_BLOCK_KEY = re.compile(r"^(?P<list>.+?)\.(?P<i>\d+)\.(?P<sub>.+)\.(?P<param>weight|bias)$")
_FUSION = {"fusion_mlp.0.": "fusion.0.", "fusion_mlp.2.": "fusion.2."}
# Prefixes a training wrapper leaves on every predictor key; the official loader strips them (in this order).
_PREDICTOR_WRAPPERS = ("predictor.", "module.predictor.", "module.")


def _split(tensor: torch.Tensor, targets: tuple, hidden: int) -> list[torch.Tensor]:
    sizes = [hidden] * 3 + ([tensor.shape[0] - 3 * hidden] if len(targets) == 4 else [])
    if sum(sizes) != tensor.shape[0] or min(sizes) <= 0:
        raise CheckpointError(f"cannot split a tensor of {tensor.shape[0]} rows into {targets} with hidden {hidden}")
    return list(torch.split(tensor, sizes, dim=0))


def _map_blocks(key, tensor, blocks: dict, hidden: int, out: dict, origin: dict) -> bool:
    """Map one key of a numbered block into `out`; False if `key` is no block key of `blocks`."""
    m = _BLOCK_KEY.match(key)
    if not m or m["list"] not in blocks:
        return False
    new_list, table = blocks[m["list"]]
    target = table.get(m["sub"])
    if target is None:
        return False
    base = f"{new_list}.{m['i']}."
    if isinstance(target, tuple):
        for name, part in zip(target, _split(tensor, target, hidden)):
            out[f"{base}{name}.{m['param']}"] = part
            origin[f"{base}{name}.{m['param']}"] = key
    else:
        out[f"{base}{target}.{m['param']}"] = tensor
        origin[f"{base}{target}.{m['param']}"] = key
    return True


def _map(state: dict, hidden: int, prefixes: dict, blocks: dict) -> tuple[dict, dict, list]:
    """-> (mapped state, mapped key -> official key, official keys the layout does not know)."""
    out, origin, unknown = {}, {}, []
    for key, tensor in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            new = prefixes[prefix] + key[len(prefix) :]
            out[new], origin[new] = tensor, key
        elif key.startswith("final_layer.adaLN_modulation.1."):
            # Original order (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift).
            shift, scale = tensor.chunk(2, dim=0)
            new = "norm_out.linear." + key.rsplit(".", 1)[1]
            out[new], origin[new] = torch.cat([scale, shift], dim=0), key
        elif not _map_blocks(key, tensor, blocks, hidden, out, origin):
            unknown.append(key)
    return out, origin, unknown


def map_official_dit(state: dict, hidden_size: int) -> tuple[dict, dict, list]:
    """Official DisCa / HunyuanVideo DiT keys -> the adapter's keys (`model.*`, `r_embedder.*`).

    -> (mapped state, mapped key -> official key, official keys with no mapping).
    """
    mapped, origin, unknown = _map(state, hidden_size, {**_PREFIXES, **_R_EMBEDDER}, _BLOCKS)
    rename = {k: k if k.startswith("r_embedder.") else f"model.{k}" for k in mapped}
    return {rename[k]: v for k, v in mapped.items()}, {rename[k]: v for k, v in origin.items()}, unknown


def unwrap_predictor(state: dict) -> dict:
    """Strip a prefix that every key carries (`predictor.`, `module.predictor.`, `module.`), as the release does."""
    for prefix in _PREDICTOR_WRAPPERS:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def map_official_predictor(state: dict, hidden_size: int) -> tuple[dict, dict, list]:
    """Official DisCa predictor keys (`fusion_mlp.*`, `mm_single_blocks.*`) -> HunyuanVideoPredictor keys."""
    return _map(unwrap_predictor(state), hidden_size, _FUSION, {"mm_single_blocks": ("blocks", _SINGLE)})


def _read(weights) -> dict:
    if isinstance(weights, dict):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _load_into(module, mapped: dict, origin: dict, unknown: list, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = list(unknown) + [origin[k] for k in mapped if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_names(unexpected)}")
        raise CheckpointError(f"{what} does not match the official DisCa layout: " + "; ".join(parts))
    bad = [
        f"{origin[k]} -> {k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointError(f"{what}: shape mismatch (checkpoint vs model) for " + "; ".join(bad[:8]))
    module.load_state_dict(mapped, strict=True)


def load_official_disca(adapter, predictor=None, *, dit=None, predictor_weights=None) -> None:
    """Load official-layout weights in place. `dit` / `predictor_weights`: a state dict or a .safetensors path.

    A DiT with `time_r_in.*` needs an adapter built with mean_flow="mean" (the official rule).
    """
    from disca.models.adapters.diffusers_hunyuan import HunyuanVideoAdapter

    if not isinstance(adapter, HunyuanVideoAdapter):
        raise ConfigError(f"the official DisCa layout is HunyuanVideo's; got a {type(adapter).__name__}")
    if dit is not None:
        state = _read(dit)
        has_r = any(k.startswith("time_r_in.") for k in state)
        if has_r and adapter.r_embedder is None:
            raise CheckpointError(
                "the DiT checkpoint has a mean-flow r embedder (time_r_in.*) but the adapter has none: "
                "build it with mean_flow='mean'"
            )
        _load_into(adapter, *map_official_dit(state, adapter.hidden_size), "DiT checkpoint")
    if predictor_weights is not None:
        if predictor is None:
            raise ConfigError("predictor weights given but no predictor to load them into")
        _load_into(predictor, *map_official_predictor(_read(predictor_weights), adapter.hidden_size), "predictor")
