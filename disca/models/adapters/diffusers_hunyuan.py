"""diffusers `HunyuanVideoTransformer3DModel` (HunyuanVideo-1.0 T2V) split into embed / trunk / head.

HunyuanVideo runs dual-stream blocks, then single-stream blocks over
concat(video, text); DisCa caches that final concat (B, Nv + L, H), as the
official DisCa code does.

Graph input `text` packs both text encoders: (B, L, text_embed_dim +
pooled_projection_dim) = the LLM token states with the CLIP pooled vector
appended to every token (`pack_text`); the adapter reads it from token 0.
There is no text mask input: prompts are trimmed to their real length instead
(for the video tokens and the real text tokens this equals the host's masked
attention; a batch must then share one length). Without a mask the graphs also
avoid two ONNX Runtime snags of the host's masked path: a `Where` on bool
tensors from `masked_fill`, and the broadcast mask ORT's opset-23 Attention
kernel rejects.

    vec  = temb (B, H)                                 every block's adaLN and the final layer
    rope = (cos, sin), each (Nv, head_dim)             from the host's own rope module
"""

from __future__ import annotations

import torch
from torch import nn

from disca.models.adapters._common import (
    TIMESTEP_SCALE,
    DiffusersAdapter,
    FusionPredictor,
    combine_time,
    make_r_embedder,
    require,
)

DEFAULT_GUIDANCE = 6.0  # diffusers HunyuanVideoPipeline's default embedded guidance scale


def pack_text(prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(B, L, Dt) LLM states + (B, Dp) CLIP pooled -> the graphs' `text` (B, L, Dt + Dp)."""
    return torch.cat([prompt_embeds, pooled[:, None].expand(-1, prompt_embeds.shape[1], -1)], dim=-1)


def _video_tokens(rope) -> int:
    return rope[0].shape[0]


class HunyuanVideoAdapter(DiffusersAdapter):
    """Inputs: latent (B, C, F, H, W), t (B,) and r (B,) in [0, 1], text (B, L, Dt + Dp) from `pack_text`.

    `guidance`: the embedded guidance scale of guidance-distilled checkpoints; it is a constant of the
    exported graphs (ignored when the host has no guidance embedder).
    `mean_flow`: None, "sum" (zero-initialised r embedder, host unchanged at init) or "mean" (official
    DisCa HunyuanVideo-1.0: vec = (emb_t + emb_r) / 2 before the text and guidance terms).
    """

    def __init__(self, model: nn.Module, mean_flow: str | None = None, guidance: float = DEFAULT_GUIDANCE):
        super().__init__(model, mean_flow)
        cfg, name = model.config, type(model).__name__
        require(cfg.image_condition_type is None, name, f"image_condition_type={cfg.image_condition_type!r} (I2V)")
        require((cfg.out_channels or cfg.in_channels) == cfg.in_channels, name, "out_channels != in_channels")
        self.in_channels = cfg.in_channels
        self.patch_size = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.hidden_size = self.num_heads * self.head_dim
        self.depth = cfg.num_layers + cfg.num_single_layers
        self.text_embed_dim = cfg.text_embed_dim
        self.text_dim = cfg.text_embed_dim + cfg.pooled_projection_dim
        self.rope_axes = tuple(cfg.rope_axes_dim)
        self.guidance = float(guidance)
        if mean_flow is not None:
            self.r_embedder = make_r_embedder(model.time_text_embed.timestep_embedder)

    def embed(self, latent, t, r, text):
        """-> tokens (B, Nv + L, H), vec (B, H), rope: what the first block receives (as in the host's forward)."""
        m, tte = self.model, self.model.time_text_embed
        rope = m.rope(latent)
        prompt, pooled = text[..., : self.text_embed_dim], text[:, 0, self.text_embed_dim :]
        ts = self._timestep(t)
        temb = tte.timestep_embedder(tte.time_proj(ts).to(pooled.dtype))  # (B, H)
        if self.r_embedder is not None:
            r_emb = self.r_embedder(tte.time_proj(self._timestep(r)).to(pooled.dtype))
            temb = combine_time(temb, r_emb, self.time_combine)
        if tte.guidance_embedder is not None:
            g = torch.full_like(ts, self.guidance * TIMESTEP_SCALE)
            temb = temb + tte.guidance_embedder(tte.time_proj(g).to(pooled.dtype))
        temb = temb + tte.text_embedder(pooled)
        x = m.x_embedder(latent)  # (B, Nv, H)
        context = m.context_embedder(prompt, ts, None)  # (B, L, H): token refiner, all tokens valid
        return torch.cat([x, context], dim=1), temb, rope

    def trunk(self, tokens, vec, rope) -> torch.Tensor:
        """Dual- then single-stream blocks -> hidden (B, Nv + L, H)."""
        n = _video_tokens(rope)
        x, context = tokens[:, :n], tokens[:, n:]
        for block in (*self.model.transformer_blocks, *self.model.single_transformer_blocks):
            x, context = block(x, context, vec, None, rope)
        return torch.cat([x, context], dim=1)

    def head(self, hidden, vec, latent, t) -> torch.Tensor:
        """Final adaLN + projection + unpatchify of the video tokens -> velocity (B, C, F, H, W)."""
        m = self.model
        f, h, w = self.grid(latent)
        x = m.proj_out(m.norm_out(hidden[:, : f * h * w], vec))  # (B, Nv, pt*p*p*C)
        pt, ph, pw = self.patch_size
        x = x.reshape(x.shape[0], f, h, w, -1, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class HunyuanVideoPredictor(FusionPredictor):
    """Fusion MLP, then `depth` of the host's single-stream blocks (official DisCa: `mm_single_blocks`).

    Inputs: tokens (B, Nv + L, H) of the current step, cached (B, Nv + L, H), vec (B, H), rope.
    """

    def __init__(self, adapter: HunyuanVideoAdapter, depth: int = 2):
        super().__init__(adapter.hidden_size)
        cfg = adapter.model.config
        block_cls = type(adapter.model.single_transformer_blocks[0])
        self.blocks = nn.ModuleList(
            block_cls(cfg.num_attention_heads, cfg.attention_head_dim, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm)
            for _ in range(depth)
        )
        for block in self.blocks:  # zero the adaLN modulation: each block starts as the identity
            nn.init.zeros_(block.norm.linear.weight)
            nn.init.zeros_(block.norm.linear.bias)

    def forward(self, tokens, cached, vec, rope) -> torch.Tensor:
        n = _video_tokens(rope)
        x = self.fuse(tokens, cached)  # (B, N, H)
        x, context = x[:, :n], x[:, n:]
        for block in self.blocks:
            x, context = block(x, context, vec, None, rope)
        return torch.cat([x, context], dim=1)
