"""diffusers `WanTransformer3DModel` (Wan2.1 / Wan2.2 T2V) split into embed / trunk / head.

Wan is not single-stream: video tokens self-attend and read the text through
cross-attention, and the text stream is never updated. So the adapter's
`tokens` and `hidden` are concat(video, text context) (B, Nv + L, H): the text
part of `hidden` is the unchanged context, which keeps the graphs' declared
`tokens = Nv + text_len` and lets the predictor's blocks cross-attend to the
current step's text.

    vec  = (temb (B, H), timestep_proj (B, 6, H))   final layer / blocks' adaLN
    rope = (cos, sin), each (1, Nv, 1, head_dim)    from the host's own rope module
"""

from __future__ import annotations

import torch
from torch import nn

from disca.models.adapters._common import DiffusersAdapter, FusionPredictor, combine_time, make_r_embedder, require


def _video_tokens(rope) -> int:
    return rope[0].shape[1]


class WanAdapter(DiffusersAdapter):
    """Inputs: latent (B, C, F, H, W), t (B,) and r (B,) in [0, 1], text (B, L, text_dim) (umT5 states).

    `mean_flow`: None (r ignored), "sum" (zero-initialised r embedder: the host's output is unchanged at
    init) or "mean" (the official DisCa HunyuanVideo-1.0 rule).
    """

    def __init__(self, model: nn.Module, mean_flow: str | None = None):
        super().__init__(model, mean_flow)
        cfg, name = model.config, type(model).__name__
        require(cfg.image_dim is None and cfg.added_kv_proj_dim is None, name, "image conditioning (I2V / FLF2V)")
        require(cfg.pos_embed_seq_len is None, name, "pos_embed_seq_len (FLF2V)")
        require((cfg.out_channels or cfg.in_channels) == cfg.in_channels, name, "out_channels != in_channels")
        require(len(cfg.patch_size) == 3, name, f"patch_size {cfg.patch_size} (need 3 dims)")
        self.in_channels = cfg.in_channels
        self.patch_size = tuple(cfg.patch_size)
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.hidden_size = self.num_heads * self.head_dim
        self.depth = cfg.num_layers
        self.text_dim = cfg.text_dim
        self.rope_axes = (model.rope.t_dim, model.rope.h_dim, model.rope.w_dim)
        if mean_flow is not None:
            self.r_embedder = make_r_embedder(model.condition_embedder.time_embedder)

    def embed(self, latent, t, r, text):
        """-> tokens (B, Nv + L, H), vec, rope: what the first block receives (as in the host's forward)."""
        m, ce = self.model, self.model.condition_embedder
        rope = m.rope(latent)
        x = m.patch_embedding(latent).flatten(2).transpose(1, 2).contiguous()  # (B, Nv, H)
        dtype = ce.time_embedder.linear_1.weight.dtype  # kept fp32 by diffusers (_keep_in_fp32_modules)
        temb = ce.time_embedder(ce.timesteps_proj(self._timestep(t)).to(dtype))  # (B, H)
        if self.r_embedder is not None:
            r_emb = self.r_embedder(ce.timesteps_proj(self._timestep(r)).to(dtype))
            temb = combine_time(temb, r_emb, self.time_combine)
        temb = temb.type_as(text)
        timestep_proj = ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))  # (B, 6, H)
        context = ce.text_embedder(text)  # (B, L, H)
        return torch.cat([x, context], dim=1), (temb, timestep_proj), rope

    def trunk(self, tokens, vec, rope) -> torch.Tensor:
        """All blocks -> hidden (B, Nv + L, H): final video states, then the (unchanged) text context."""
        n = _video_tokens(rope)
        x, context = tokens[:, :n], tokens[:, n:]
        for block in self.model.blocks:
            x = block(x, context, vec[1], rope)
        return torch.cat([x, context], dim=1)

    def head(self, hidden, vec, latent, t) -> torch.Tensor:
        """Output norm + projection + unpatchify of the video tokens -> velocity (B, C, F, H, W)."""
        m = self.model
        f, h, w = self.grid(latent)
        x = hidden[:, : f * h * w]
        shift, scale = (m.scale_shift_table + vec[0].unsqueeze(1)).chunk(2, dim=1)
        x = (m.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = m.proj_out(x)  # (B, Nv, pt*ph*pw*C)
        pt, ph, pw = self.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class WanPredictor(FusionPredictor):
    """Fusion MLP on the video tokens, then `depth` blocks of the host's own `WanTransformerBlock` type.

    Inputs: tokens (B, Nv + L, H) of the current step, cached (B, Nv + L, H), vec, rope (from `embed`).
    """

    def __init__(self, adapter: WanAdapter, depth: int = 2):
        super().__init__(adapter.hidden_size)
        cfg = adapter.model.config
        block_cls = type(adapter.model.blocks[0])
        self.blocks = nn.ModuleList(
            block_cls(
                adapter.hidden_size,
                cfg.ffn_dim,
                cfg.num_attention_heads,
                cfg.qk_norm,
                cfg.cross_attn_norm,
                cfg.eps,
                cfg.added_kv_proj_dim,
            )
            for _ in range(depth)
        )

    def forward(self, tokens, cached, vec, rope) -> torch.Tensor:
        n = _video_tokens(rope)
        context = tokens[:, n:]  # the current step's text: Wan's text stream never changes
        x = self.fuse(tokens[:, :n], cached[:, :n])  # (B, Nv, H)
        for block in self.blocks:
            x = block(x, context, vec[1], rope)
        return torch.cat([x, context], dim=1)
