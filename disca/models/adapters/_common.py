"""What the diffusers adapters share: the mean-flow r embedder, the base adapter and the fusion predictor.

An adapter holds the unmodified diffusers transformer as `self.model` and splits
its forward into the three stages our graphs call (see `disca.models.graphs`):

    embed(latent, t, r, text) -> tokens, vec, rope
    trunk(tokens, vec, rope)  -> hidden (B, Nv + L, H): the cached features
    head(hidden, vec, latent, t) -> velocity

`vec` and `rope` are whatever the host's blocks need (a tensor or a tuple of
tensors); the graphs only pass them through. Times t, r are in [0, 1] like the
rest of disca and are scaled to diffusers' 0..1000 timestep convention here.
"""

from __future__ import annotations

import torch
from torch import nn

from disca.errors import ConfigError
from disca.models.config import DiTConfig, ModelConfig, PredictorConfig

TIMESTEP_SCALE = 1000.0  # diffusers' flow-matching schedulers pass timestep = sigma * num_train_timesteps (1000)
TIME_COMBINE = ("mean", "sum")


def make_r_embedder(like: nn.Module) -> nn.Module:
    """A second timestep embedder shaped like the host's `TimestepEmbedding`, output layer zeroed.

    Zero output means emb_r(r) = 0 at init, so with time_combine="sum" the adapted model is exactly the host.
    """
    from diffusers.models.embeddings import TimestepEmbedding

    emb = TimestepEmbedding(in_channels=like.linear_1.in_features, time_embed_dim=like.linear_2.out_features)
    emb.to(like.linear_1.weight.dtype)
    nn.init.zeros_(emb.linear_2.weight)
    nn.init.zeros_(emb.linear_2.bias)
    return emb


def combine_time(t_emb: torch.Tensor, r_emb: torch.Tensor, how: str) -> torch.Tensor:
    # "mean" is the official DisCa HunyuanVideo-1.0 rule: vec = (emb_t + emb_r) / 2 (changes the host at init);
    # "sum" (HunyuanVideo-1.5 style) leaves the host unchanged while emb_r is zero.
    return (t_emb + r_emb) / 2 if how == "mean" else t_emb + r_emb


def check_time_combine(mean_flow: str | None) -> None:
    if mean_flow is not None and mean_flow not in TIME_COMBINE:
        raise ConfigError(f"mean_flow must be None, 'mean' or 'sum', got {mean_flow!r}")


def require(ok: bool, model_name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{model_name}: {what} is not supported by the DisCa adapter")


class DiffusersAdapter(nn.Module):
    """Base of the per-architecture adapters. Subclasses set the widths below and the three stages."""

    in_channels: int
    patch_size: tuple[int, int, int]
    hidden_size: int
    num_heads: int
    head_dim: int
    depth: int
    text_dim: int  # width of the `text` graph input
    rope_axes: tuple[int, int, int]

    def __init__(self, model: nn.Module, mean_flow: str | None):
        super().__init__()
        check_time_combine(mean_flow)
        self.model = model
        self.time_combine = mean_flow or "sum"
        self.r_embedder: nn.Module | None = None

    def _timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t * TIMESTEP_SCALE

    def grid(self, latent: torch.Tensor) -> tuple:
        pf, ph, pw = self.patch_size
        _, _, F_, H_, W_ = latent.shape
        return F_ // pf, H_ // ph, W_ // pw

    def forward(self, latent, t, r, text) -> torch.Tensor:
        tokens, vec, rope = self.embed(latent, t, r, text)
        return self.head(self.trunk(tokens, vec, rope), vec, latent, t)

    def model_config(self, predictor_depth: int = 2) -> ModelConfig:
        """The graphs' widths as a ModelConfig, for `export_bundle` and the bundle manifest.

        It describes I/O (channels, patch, text and hidden widths), not a VideoDiT to rebuild: export with
        include_weights=False and name the diffusers source in `weights_note`.
        """
        dit = DiTConfig(
            in_channels=self.in_channels,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            text_dim=self.text_dim,
            rope_axes=self.rope_axes,
            mean_flow=self.r_embedder is not None,
            time_combine=self.time_combine,
        )
        return ModelConfig(dit, PredictorConfig(depth=predictor_depth))


class FusionPredictor(nn.Module):
    """DisCa's predictor for an adapted host: fusion MLP on concat(tokens, cached), then host-type blocks.

    Subclasses build `self.blocks` from the host's own block class and define `forward(tokens, cached, vec,
    rope) -> (B, N, H)` with the host's `vec` / `rope` forms.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.fusion = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        for m in self.fusion:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def fuse(self, tokens: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([tokens, cached], dim=-1))  # (B, N, 2H) -> (B, N, H)
