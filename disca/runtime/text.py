"""Prompt -> text-token embeddings for the runtime (numpy only).

A bundle with a trained word-level text embedding (`text` in the manifest) looks
each word up in its table; an unknown word is an error listing the known words.
A bundle without one (an untrained preset) embeds words deterministically: each
word gets a fixed unit-normal vector seeded by its sha256.
"""

from __future__ import annotations

import hashlib

import numpy as np

from disca.errors import DiscaError

NULL = "<null>"  # the token of the empty (unconditional) prompt, row 0 of every vocabulary


def words(prompt: str) -> list[str]:
    out = prompt.lower().replace(",", " ").replace(".", " ").split()
    if not out:
        raise DiscaError("the prompt is empty: give at least one word")
    return out


class Vocabulary:
    """Word-level vocabulary; index 0 is the null token."""

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != NULL:
            raise DiscaError(f"a vocabulary must start with the null token {NULL!r}")
        self.tokens = list(tokens)
        self.index = {w: i for i, w in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, prompt: str) -> list[int]:
        out = []
        for w in words(prompt):
            if w not in self.index or w == NULL:
                known = ", ".join(self.tokens[1:])
                raise DiscaError(f"unknown word {w!r} in prompt {prompt!r}; known words: {known}")
            out.append(self.index[w])
        return out


def hash_embed(prompt: str, dim: int) -> np.ndarray:
    """-> (L, dim) float32, one row per word."""
    rows = []
    for w in words(prompt):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim))
    return np.stack(rows).astype(np.float32)
