"""A DisCa-ready video DiT, read top to bottom.

Single-stream transformer in the style of HunyuanVideo's single blocks: video
tokens (3D patches of a latent) and text tokens attend jointly, every block is
adaLN-Zero modulated by one conditioning vector `vec`, q/k are RMS-normed and
video tokens carry 3D rotary positions over (frame, row, column).

Mean-flow conditioning: a second timestep embedder for r, combined with the t
embedding as in the official DisCa HunyuanVideo-1.0 code (their mean).

The network is split into the three stages DisCa needs:
    embed(latent, t, r, text) -> tokens, vec, rope
    trunk(tokens, vec, rope)  -> hidden     (the cached features)
    head(hidden, vec, latent, t) -> velocity
and knows nothing about the diffusion process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from disca.models.config import DiTConfig

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (N, head_dim // 2)


# ---------------------------------------------------------------- helpers


X_PRED_MIN_T = 0.05  # x-prediction: v = (z - x) / max(t, this), so that t -> 0 stays finite


def expand_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast over a latent."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to [0, 1000] like the DiT family). (B,) -> (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_table(grid: tuple, text_len, axes: tuple[int, int, int], theta: float, device) -> Rope:
    """cos/sin of 3D rotary angles for f*h*w video tokens, then identity for the text tokens."""
    angles = []
    for size, dim, repeat in zip(grid, axes, _axis_layout(grid)):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
        pos = torch.arange(size, dtype=torch.float32, device=device)
        ang = pos[:, None] * inv[None]  # (size, dim/2)
        angles.append(repeat(ang))  # (f*h*w, dim/2)
    video = torch.cat(angles, dim=-1)  # (Nv, head_dim/2)
    text = torch.zeros(text_len, video.shape[-1], dtype=video.dtype, device=device)  # no rotation
    ang = torch.cat([video, text], dim=0)  # (N, head_dim/2)
    return torch.cos(ang), torch.sin(ang)


def _axis_layout(grid):
    """Functions that broadcast one axis' angles over the flattened (f, h, w) token order."""
    f, h, w = grid

    def frames(a):
        return a[:, None, None, :].expand(f, h, w, a.shape[-1]).reshape(-1, a.shape[-1])

    def rows(a):
        return a[None, :, None, :].expand(f, h, w, a.shape[-1]).reshape(-1, a.shape[-1])

    def cols(a):
        return a[None, None, :, :].expand(f, h, w, a.shape[-1]).reshape(-1, a.shape[-1])

    return frames, rows, cols


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + d/2]) of (B, heads, N, d) by the table's angles."""
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def init_linears(module: nn.Module) -> None:
    """Xavier for every linear map, zero biases, as in DiT."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def zero_modulation(blocks) -> None:
    """Zero the adaLN modulation so each block starts as the identity (adaLN-Zero)."""
    for block in blocks:
        nn.init.zeros_(block.modulation.weight)
        nn.init.zeros_(block.modulation.bias)


# ---------------------------------------------------------------- embedders


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Features in fp32 (sin/cos of t*1000 lose precision in fp16), then the MLP's own dtype.
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))  # (B, H)


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


# ---------------------------------------------------------------- the block


class Block(nn.Module):
    """Single-stream DiT block: parallel attention + MLP on adaLN-modulated tokens."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        hidden, self.heads, self.head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.mlp_hidden = int(hidden * cfg.mlp_ratio)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden, 3 * hidden)  # shift, scale, gate
        self.linear1 = nn.Linear(hidden, 3 * hidden + self.mlp_hidden)  # qkv and MLP-in fused
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.act = nn.GELU(approximate="tanh")
        self.linear2 = nn.Linear(hidden + self.mlp_hidden, hidden)  # attention-out and MLP-out fused

    def modulated_input(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """adaLN(x) as the attention and MLP see it: TeaCache's cheap signal of how much a step changes."""
        shift, scale, _ = self.modulation(F.silu(vec)).unsqueeze(1).chunk(3, dim=-1)
        return modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, rope: Rope) -> torch.Tensor:
        B, N, D = x.shape
        shift, scale, gate = self.modulation(F.silu(vec)).unsqueeze(1).chunk(3, dim=-1)  # 3 x (B, 1, D)
        h = modulate(self.norm(x), shift, scale)
        qkv, mlp = self.linear1(h).split([3 * D, self.mlp_hidden], dim=-1)
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        q = apply_rope(self.q_norm(q), rope)
        k = apply_rope(self.k_norm(k), rope)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        attn = attn.transpose(1, 2).reshape(B, N, D)
        return x + gate * self.linear2(torch.cat([attn, self.act(mlp)], dim=-1))


class FinalLayer(nn.Module):
    """adaLN + linear to patch values (unpatchify happens in the DiT)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_volume * cfg.in_channels)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(vec)).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, Nv, p*C)


# ---------------------------------------------------------------- the model


class VideoDiT(nn.Module):
    """Inputs: latent (B, C, F, H, W), t (B,), r (B,), text (B, L, Dt) token embeddings.

    Output of forward: velocity (B, C, F, H, W) (the mean velocity u(z, r, t) for a
    mean-flow model, v(z, t) otherwise: r is then ignored).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_size
        self.patch_embed = nn.Conv3d(cfg.in_channels, H, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_proj = _mlp(cfg.text_dim, H)
        self.text_pool = _mlp(cfg.text_dim, H)
        self.t_embedder = TimestepEmbedder(H, cfg.freq_dim)
        self.r_embedder = TimestepEmbedder(H, cfg.freq_dim) if cfg.mean_flow else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_linears(self)
        # Patch embedding like a linear layer over the flattened patch.
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        # Timestep MLPs: small normal, as in DiT.
        for emb in (self.t_embedder, self.r_embedder):
            if emb is not None:
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        zero_modulation(self.blocks)
        # Zero the output so the untrained model predicts zero velocity.
        for m in (self.final.modulation, self.final.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def grid(self, latent: torch.Tensor) -> tuple:
        """Token grid (f, h, w) of a latent."""
        pf, ph, pw = self.cfg.patch_size
        _, _, F_, H_, W_ = latent.shape
        return F_ // pf, H_ // ph, W_ // pw

    def embed(self, latent, t, r, text):
        """-> tokens (B, Nv + L, H), vec (B, H), rope: exactly what the first block receives."""
        grid = self.grid(latent)
        x = self.patch_embed(latent).flatten(2).transpose(1, 2)  # (B, Nv, H)
        tokens = torch.cat([x, self.text_proj(text)], dim=1)  # (B, N, H)
        vec = self.conditioning(t, r, text)
        rope = rope_table(grid, text.shape[1], self.cfg.resolved_rope_axes, self.cfg.rope_theta, latent.device)
        return tokens, vec, rope

    def conditioning(self, t, r, text) -> torch.Tensor:
        """-> vec (B, H): the time(s) and pooled text that modulate every block and the head."""
        vec = self.t_embedder(t)  # (B, H)
        if self.r_embedder is not None:
            vec = vec + self.r_embedder(r)
            if self.cfg.time_combine == "mean":
                vec = vec / 2
        return vec + self.text_pool(text.mean(dim=1))

    def patchify(self, latent) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, Nv, C*pf*ph*pw): the patches `patch_embed` reads, in its weight's order
        (`patch_embed(latent)` equals `patchify(latent) @ weight.flatten(1).T + bias`)."""
        f, h, w = self.grid(latent)
        pf, ph, pw = self.cfg.patch_size
        x = latent.reshape(latent.shape[0], self.cfg.in_channels, f, pf, h, ph, w, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, f, h, w, C, pf, ph, pw)
        return x.reshape(latent.shape[0], f * h * w, -1)

    def trunk(self, tokens, vec, rope) -> torch.Tensor:
        """All blocks: -> hidden (B, N, H), the final hidden state DisCa caches."""
        for block in self.blocks:
            tokens = block(tokens, vec, rope)
        return tokens

    def first_block(self, tokens, vec, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """-> block 0's modulated input and its output: what the threshold caches (TeaCache,
        First-Block-Cache) probe each step to decide whether to skip the rest."""
        block = self.blocks[0]
        return block.modulated_input(tokens, vec), block(tokens, vec, rope)

    def head(self, hidden, vec, latent, t) -> torch.Tensor:
        """Final adaLN layer + unpatchify of the video tokens -> velocity (B, C, F, H, W).

        The latent and t are read only by an x-prediction model, to turn its clean-latent output into a velocity.
        """
        f, h, w = grid = self.grid(latent)
        out = self._unpatchify(self.final(hidden[:, : f * h * w], vec), grid)  # (B, C, F, H, W)
        if self.cfg.prediction == "x":
            t = expand_time(t.clamp(min=X_PRED_MIN_T).to(out.dtype), out)
            return (latent - out) / t
        return out

    def _unpatchify(self, x, grid) -> torch.Tensor:
        """(B, Nv, p*C) -> (B, C, F, H, W)"""
        f, h, w = grid
        pf, ph, pw = self.cfg.patch_size
        B = x.shape[0]
        x = x.reshape(B, f, h, w, self.cfg.in_channels, pf, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, f, pf, h, ph, w, pw)
        return x.reshape(B, self.cfg.in_channels, f * pf, h * ph, w * pw)

    def forward(self, latent, t, r, text) -> torch.Tensor:
        tokens, vec, rope = self.embed(latent, t, r, text)
        return self.head(self.trunk(tokens, vec, rope), vec, latent, t)
