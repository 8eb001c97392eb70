"""A learned word-level text embedding: prompt words -> (L, Dt) text tokens.

Part of the checkpoint and of the exported bundle (as a plain table), so the
runtime turns a prompt into `text` with numpy alone.
"""

from __future__ import annotations

import torch
from torch import nn

from disca.vocab import Vocabulary


class WordEmbedding(nn.Module):
    def __init__(self, vocab: list[str], dim: int):
        super().__init__()
        self.vocab = Vocabulary(vocab)
        self.table = nn.Embedding(len(vocab), dim)
        nn.init.normal_(self.table.weight, std=1.0)  # unit scale, like the hashed embeddings of untrained bundles

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)  # (B, L) -> (B, L, Dt)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) token ids; prompts of one batch must have the same word count."""
        rows = [self.vocab.ids(p) for p in prompts]
        return torch.tensor(rows, dtype=torch.long, device=self.table.weight.device)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.ids(prompts))

    def null(self, batch: int, length: int) -> torch.Tensor:
        """Embeddings of the empty prompt (all null tokens), for classifier-free guidance."""
        return self(torch.zeros(batch, length, dtype=torch.long, device=self.table.weight.device))
