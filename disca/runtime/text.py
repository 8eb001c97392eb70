"""Prompt -> text-token embeddings for the runtime (numpy only).

Until a bundle ships a trained text embedding, words are embedded
deterministically: each word gets a fixed unit-normal vector seeded by its
sha256, so the same prompt always gives the same conditioning.
"""

from __future__ import annotations

import hashlib

import numpy as np

from disca.errors import DiscaError


def words(prompt: str) -> list[str]:
    out = prompt.lower().replace(",", " ").replace(".", " ").split()
    if not out:
        raise DiscaError("the prompt is empty: give at least one word")
    return out


def hash_embed(prompt: str, dim: int) -> np.ndarray:
    """-> (L, dim) float32, one row per word."""
    rows = []
    for w in words(prompt):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim))
    return np.stack(rows).astype(np.float32)
