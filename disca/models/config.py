"""Model configs: plain dataclasses with named presets.

Configs are stored as JSON next to the weights (see checkpoint.py) and inside
every exported bundle's manifest, so they must stay plain data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from disca.errors import ConfigError


@dataclass
class DiTConfig:
    in_channels: int = 3  # latent channels (3 for the pixel-space demo, 16 for a VAE latent)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, rows, cols) per token
    hidden_size: int = 256  # width H of every token
    depth: int = 12  # number of transformer blocks in the trunk
    num_heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 64  # width Dt of the text-token embeddings fed to the model
    rope_axes: tuple[int, int, int] | None = None  # head-dim split over (frame, row, col); None = auto
    rope_theta: float = 256.0
    mean_flow: bool = True  # second timestep embedder for r (False = ordinary flow-matching teacher)
    time_combine: str = "mean"  # how emb_t and emb_r combine: "mean" (HunyuanVideo-1.0) or "sum" (1.5)
    freq_dim: int = 256  # sinusoidal timestep features before the embedder MLP
    # What the final layer predicts: "velocity", or "x" (the clean latent, turned into the velocity in-graph as
    # v = (z - x) / t). x-prediction suits pixel-space models whose patches are wider than the hidden size:
    # noise does not fit through the bottleneck, clean images do (Li & He 2025, "Back to Basics").
    prediction: str = "velocity"

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
        if self.rope_axes is not None:
            self.rope_axes = tuple(self.rope_axes)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        axes = self.resolved_rope_axes
        if sum(axes) != self.head_dim or any(a % 2 for a in axes):
            raise ConfigError(f"rope_axes {axes} must be even and sum to head_dim {self.head_dim}")
        if self.prediction not in ("velocity", "x"):
            raise ConfigError(f"prediction must be 'velocity' or 'x', got {self.prediction!r}")
        if self.time_combine not in ("mean", "sum"):
            raise ConfigError(f"time_combine must be 'mean' or 'sum', got {self.time_combine!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def resolved_rope_axes(self) -> tuple[int, int, int]:
        if self.rope_axes is not None:
            return self.rope_axes
        # Rows and columns get equal shares, frames the rest (as HunyuanVideo's 16/56/56 split).
        hw = (self.head_dim * 3 // 8) // 2 * 2
        return (self.head_dim - 2 * hw, hw, hw)

    @property
    def patch_volume(self) -> int:
        pf, ph, pw = self.patch_size
        return pf * ph * pw


@dataclass
class PredictorConfig:
    depth: int = 2  # blocks of the DiT's own type after the fusion MLP (2 in DisCa)
    # Add the prediction to the cached hidden state (output = cache + correction, the correction's last layer
    # zero-initialised): training starts from plain reuse and learns what changes. Off in the official layout.
    residual: bool = False
    # The runtime feeds the predictor, as its cache, TaylorSeer's first-order forecast of the hidden state from
    # the last two anchors (in step index) instead of the last anchor's: with `residual`, an untrained predictor
    # is that forecast and training learns the correction on top. Same graph and layout; the runtime reads it
    # from the bundle's model config (absent: False).
    forecast: bool = False
    # The fusion MLP's hidden layer is shifted and scaled by the step's conditioning `vec` (adaLN, zero-initialised:
    # untrained, it changes nothing), so the correction knows the noise level even without blocks. Not official.
    modulate: bool = False


@dataclass
class ModelConfig:
    """A DisCa model: the DiT and its cache predictor."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    vocab: list[str] | None = None  # word-level vocabulary of a learned text embedding (None: external embeddings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        try:
            return cls(
                dit=_build(DiTConfig, data["dit"]),
                predictor=_build(PredictorConfig, data["predictor"]),
                vocab=_vocab(data.get("vocab")),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"invalid model config: {e}") from None


def _vocab(value):
    if value is not None and not (isinstance(value, list) and value and all(type(w) is str for w in value)):
        raise ConfigError("the model config's vocab must be null or a non-empty list of words")
    return value


def _build(cls, data: dict):
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    for f in fields(cls):  # configs come from files (checkpoints, bundles): "12" is not 12, "no" is not False
        if f.name in data:
            _check_type(cls.__name__, f.name, data[f.name], f.default)
    return cls(**data)


MAX_SIZE = 1 << 16  # any width, depth or patch of a config: far above real models, a bound on what a file can ask


def _check_type(owner: str, name: str, value, default) -> None:
    def bad(expected: str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return ConfigError(f"{owner}.{name} must be {expected}, got {shown}")

    def size(v, low: int = 1) -> bool:
        return type(v) is int and low <= v <= MAX_SIZE

    if isinstance(default, bool):
        if type(value) is not bool:
            raise bad("true or false")
    elif isinstance(default, int):
        low = 0 if (owner, name) == ("PredictorConfig", "depth") else 1  # a predictor may have no blocks
        if not size(value, low):
            raise bad(f"an integer from {low} to {MAX_SIZE}")
    elif isinstance(default, float):
        if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= MAX_SIZE:
            raise bad(f"a positive number up to {MAX_SIZE}")
    elif isinstance(default, str):
        if type(value) is not str:
            raise bad("a string")
    elif name == "patch_size":
        if not (isinstance(value, list | tuple) and len(value) == 3 and all(size(v) for v in value)):
            raise bad("3 positive integers")
    elif name == "rope_axes":
        if value is not None and not (
            isinstance(value, list | tuple)
            and len(value) == 3
            and all(type(v) is int and 0 <= v <= MAX_SIZE for v in value)
        ):
            raise bad("null or 3 non-negative integers")


PRESETS: dict[str, ModelConfig] = {
    # For tests: exports in seconds, runs in milliseconds.
    "tiny": ModelConfig(
        DiTConfig(patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, text_dim=16),
        PredictorConfig(depth=1),
    ),
    # The shipped demo model: 8x32x32 RGB clips in pixel space, CPU-trainable (2x4x4 patches: 256 video tokens).
    # 12 blocks x 128 wide with a 1-block predictor: a 48 x 64 version kept the predictor near 5% of the DiT,
    # but trained 2.5x slower per step on CPU and had learned no shapes after 3400 steps.
    "demo": ModelConfig(
        DiTConfig(patch_size=(2, 4, 4), hidden_size=128, depth=12, num_heads=4, text_dim=32, prediction="x"),
        PredictorConfig(depth=1, residual=True),
    ),
}

DEFAULT_PRESET = "demo"


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name].to_dict())  # a copy the caller may change
