"""The DisCa cache predictor.

On a cached (non-anchor) step it forecasts the DiT's final hidden state from
the hidden state cached at the last anchor step and the current step's cheap
token embedding; the DiT's own head then turns the forecast into the velocity.
Structure as in the official DisCa code: a fusion MLP on the channel concat
(2H -> H, SiLU, H -> H), then a few blocks of the DiT's own type, modulated by
the current step's `vec` (time reaches the predictor only through `vec`).
With `residual` (not in the official code) the fusion MLP's output is added to
the cache, its last layer starting at zero: an untrained predictor is plain reuse.
With `modulate` (not official) the fusion's hidden layer is modulated by `vec` (adaLN), so
a predictor without blocks also knows the step's time.
With `forecast` the runtime passes, as the cache, the first-order Taylor forecast of
the hidden state from the last two anchors (`disca.runtime.schedule.TaylorForecast`):
the module is unchanged, an untrained residual predictor is then that forecast.
"""

from __future__ import annotations

import torch
from torch import nn

from disca.models.config import DiTConfig, PredictorConfig
from disca.models.dit import Block, Rope, init_linears, modulate, zero_modulation


class CachePredictor(nn.Module):
    """Inputs: tokens (B, N, H) of the current step, cached (B, N, H), vec (B, H), rope.

    Output: the predicted hidden state (B, N, H).
    """

    def __init__(self, dit: DiTConfig, cfg: PredictorConfig):
        super().__init__()
        H = dit.hidden_size
        self.fusion = nn.Sequential(nn.Linear(2 * H, H), nn.SiLU(), nn.Linear(H, H))
        self.modulation = nn.Linear(H, 2 * H) if cfg.modulate else None
        self.blocks = nn.ModuleList(Block(dit) for _ in range(cfg.depth))
        self.residual = cfg.residual
        self.forecast = cfg.forecast  # read by the runtime (what it passes as `cached`), not here
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_linears(self)
        zero_modulation(self.blocks)  # the untrained predictor is the fusion MLP
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)
        if self.residual:  # ... and, residual, plain reuse of the cache
            nn.init.zeros_(self.fusion[-1].weight)
            nn.init.zeros_(self.fusion[-1].bias)

    def fuse(self, pre: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The fusion MLP after its first layer: pre (B, N, H), the first layer's output -> (B, N, H)."""
        if self.modulation is not None:
            shift, scale = self.modulation(nn.functional.silu(vec)).unsqueeze(1).chunk(2, dim=-1)
            pre = modulate(pre, shift, scale)
        return self.fusion[2](self.fusion[1](pre))

    def forward(self, tokens: torch.Tensor, cached: torch.Tensor, vec: torch.Tensor, rope: Rope) -> torch.Tensor:
        x = self.fuse(self.fusion[0](torch.cat([tokens, cached], dim=-1)), vec)  # (B, N, 2H) -> (B, N, H)
        if self.residual:
            x = cached + x
        for block in self.blocks:
            x = block(x, vec, rope)
        return x
