"""PyTorch networks: the video DiT and the cache predictor (needs the `torch` extra)."""

from disca.models.checkpoint import load_checkpoint, save_checkpoint
from disca.models.config import DEFAULT_PRESET, PRESETS, DiTConfig, ModelConfig, PredictorConfig, preset
from disca.models.dit import VideoDiT
from disca.models.predictor import CachePredictor

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "CachePredictor",
    "DiTConfig",
    "ModelConfig",
    "PredictorConfig",
    "VideoDiT",
    "build",
    "load_checkpoint",
    "num_params",
    "preset",
    "randomize_",
    "save_checkpoint",
]


def build(cfg: ModelConfig) -> tuple[VideoDiT, CachePredictor]:
    """A fresh (untrained) DiT and predictor for a config."""
    return VideoDiT(cfg.dit), CachePredictor(cfg.dit, cfg.predictor)


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize_(module, seed: int = 0):
    """Overwrite every parameter with random values, zero-initialised ones included.

    An untrained adaLN-Zero model outputs exactly zero and its blocks are the
    identity, which makes parity checks and benchmarks of an export meaningless;
    random weights (fan-in scaled, norms near 1) exercise every path.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module
