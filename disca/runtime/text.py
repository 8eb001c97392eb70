"""Prompt -> text-token embeddings for the runtime (numpy only).

A bundle with a trained word-level text embedding (`text` in the manifest) looks
each word up in its table; an unknown word is an error listing the known words.
A bundle without one (an untrained preset) embeds words deterministically: each
word gets a fixed unit-normal vector seeded by its sha256.
"""

from __future__ import annotations

import hashlib

import numpy as np

from disca.vocab import words


def hash_embed(prompt: str, dim: int) -> np.ndarray:
    """-> (L, dim) float32, one row per word."""
    rows = []
    for w in words(prompt):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim))
    return np.stack(rows).astype(np.float32)
