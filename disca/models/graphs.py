"""The two DisCa graphs as modules: what gets exported, and what the torch backend runs.

    FullGraph:      (latent, t, r, text)         -> velocity, hidden   (anchor step)
    PredictorGraph: (latent, t, r, text, hidden) -> velocity           (cached step)
    HeadGraph:      (latent, t, r, text, hidden) -> velocity           (training-free cached step: the
                                                                        hidden state reused or extrapolated)
    FirstBlockGraph: (latent, t, r, text)        -> tokens, modulated, first, vec   (the threshold caches' probe)
    RestGraph:      (latent, t, text, vec, first) -> velocity, hidden  (DBCache's full step after the probe:
                                                                        blocks 1..N + head, nothing run twice)
    TailGraph:      (latent, t, vec, hidden)      -> velocity           (DBCache's cached step: the head alone,
                                                                        on the probe's `vec`)

The predictor graph carries the DiT's embedders and head around the predictor,
so a cached step is one call.
"""

from __future__ import annotations

from torch import nn

from disca.models.dit import VideoDiT, rope_table
from disca.models.predictor import CachePredictor


class FullGraph(nn.Module):
    def __init__(self, dit: VideoDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latent, t, r, text):
        tokens, vec, rope = self.dit.embed(latent, t, r, text)
        hidden = self.dit.trunk(tokens, vec, rope)  # (B, N, H): the cache
        return self.dit.head(hidden, vec, latent, t), hidden


class PredictorGraph(nn.Module):
    def __init__(self, dit: VideoDiT, predictor: CachePredictor):
        super().__init__()
        self.dit = dit
        self.predictor = predictor

    def forward(self, latent, t, r, text, hidden):
        if isinstance(self.dit, VideoDiT) and isinstance(self.predictor, CachePredictor) and not self.predictor.blocks:
            return self._tokenwise(latent, t, r, text, hidden)
        tokens, vec, rope = self.dit.embed(latent, t, r, text)
        predicted = self.predictor(tokens, hidden, vec, rope)  # (B, N, H)
        return self.dit.head(predicted, vec, latent, t)

    def _tokenwise(self, latent, t, r, text, hidden):
        """The same velocity for a predictor without blocks, for less work: each token's forecast then depends
        on that token alone and the head reads the video tokens only, so the text tokens are not embedded or
        predicted; and the patch embedding (linear) is folded into the fusion's first layer (one matmul
        fewer per token). The folded weights depend on weights only: exporters fold them to constants."""
        dit, fusion = self.dit, self.predictor.fusion
        H = dit.cfg.hidden_size
        patches = dit.patchify(latent)  # (B, Nv, C*pf*ph*pw)
        cached = hidden[:, : patches.shape[1]]
        w_tok, w_cache = fusion[0].weight[:, :H], fusion[0].weight[:, H:]
        w_patch = w_tok @ dit.patch_embed.weight.flatten(1)  # (H, C*pf*ph*pw)
        bias = fusion[0].bias + w_tok @ dit.patch_embed.bias
        vec = dit.conditioning(t, r, text)
        x = self.predictor.fuse(patches @ w_patch.T + cached @ w_cache.T + bias, vec)
        predicted = cached + x if self.predictor.residual else x
        return dit.head(predicted, vec, latent, t)


class HeadGraph(nn.Module):
    """The DiT without its trunk: the velocity from a given final hidden state (FORA / TaylorSeer baselines)."""

    def __init__(self, dit: VideoDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latent, t, r, text, hidden):
        if isinstance(self.dit, VideoDiT):  # the conditioning alone: no tokens are embedded for nothing
            return self.dit.head(hidden, self.dit.conditioning(t, r, text), latent, t)
        _, vec, _ = self.dit.embed(latent, t, r, text)
        return self.dit.head(hidden, vec, latent, t)


class FirstBlockGraph(nn.Module):
    """The probe of the threshold caches: the embedders and the first block only (1/depth of the trunk).

    -> tokens (the trunk's input), modulated (block 0's adaLN-modulated input: TeaCache's signal),
       first (block 0's output: First-Block-Cache's signal), vec (the conditioning: what `rest` and
       `tail` take instead of re-running the embedders). A skipped step then adds the trunk's
       cached residual to `tokens` (TeaCache) or to `first` (First-Block-Cache) and runs the head graph;
       the DBCache policies continue from `first` with `rest` (full step) or `tail` (cached step).
    The full graph stays whole (the anchor step is one call on every backend); the probe is extra.
    """

    def __init__(self, dit: VideoDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latent, t, r, text):
        tokens, vec, rope = self.dit.embed(latent, t, r, text)
        modulated, first = self.dit.first_block(tokens, vec, rope)
        return tokens, modulated, first, vec


class RestGraph(nn.Module):
    """Blocks 1..N and the head, fed by the probe's block-0 output and `vec`: probe + rest is exactly one
    full pass. `text` is read for its length only (the rotary table of the text tokens)."""

    def __init__(self, dit: VideoDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latent, t, text, vec, first):
        cfg = self.dit.cfg
        rope = rope_table(self.dit.grid(latent), text.shape[1], cfg.resolved_rope_axes, cfg.rope_theta, latent.device)
        hidden = first
        for block in self.dit.blocks[1:]:
            hidden = block(hidden, vec, rope)
        return self.dit.head(hidden, vec, latent, t), hidden


class TailGraph(nn.Module):
    """The DiT's final layer + unpatchify on a given hidden state, with the probe's `vec` (no embedders)."""

    def __init__(self, dit: VideoDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latent, t, vec, hidden):
        return self.dit.head(hidden, vec, latent, t)
