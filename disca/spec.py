"""The two graphs' I/O, declared as data.

Export (dummy inputs, dynamic axes), validation, the runtime's shape checks and
TensorRT optimisation profiles are all driven from these declarations. Plain
Python + numpy: the deploy side reads them from the bundle manifest.

Symbolic dims: batch, frames, height, width (latent pixels), text_len, and the
derived `tokens` = (frames/pf) * (height/ph) * (width/pw) + text_len.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from disca.errors import ShapeError

DIMS = ("batch", "frames", "height", "width", "text_len")  # the free symbolic dims


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints for fixed axes, dim names for dynamic ones
    dtype: str = "float32"


@dataclass
class GraphSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(
            d["name"],
            [TensorSpec(**t) for t in d["inputs"]],
            [TensorSpec(**t) for t in d["outputs"]],
            d.get("description", ""),
        )


def graph_specs(channels: int, text_dim: int, hidden: int, first: bool = True) -> dict[str, GraphSpec]:
    """The `full`, `predictor` and `head` graphs of a DiT with these widths, and (`first`) the probe graph of the
    threshold caches (TeaCache, First-Block-Cache, DBCache) with DBCache's `rest` and `tail`."""
    inputs = [
        TensorSpec("latent", ["batch", channels, "frames", "height", "width"]),
        TensorSpec("t", ["batch"]),
        TensorSpec("r", ["batch"]),
        TensorSpec("text", ["batch", "text_len", text_dim]),
    ]
    velocity = TensorSpec("velocity", ["batch", channels, "frames", "height", "width"])
    hidden_state = TensorSpec("hidden", ["batch", "tokens", hidden])
    specs = {
        "full": GraphSpec(
            "full", inputs, [velocity, hidden_state], "anchor step: the whole DiT; `hidden` refreshes the cache"
        ),
        "predictor": GraphSpec(
            "predictor",
            [*inputs, hidden_state],
            [velocity],
            "cached step: DiT embedders -> cache predictor (reads `hidden`) -> DiT head",
        ),
        "head": GraphSpec(
            "head",
            [*inputs, hidden_state],
            [velocity],
            "training-free cached step: DiT embedders -> DiT head on a given `hidden` (reused or extrapolated)",
        ),
    }
    if first:
        specs["first"] = GraphSpec(
            "first",
            inputs,
            [TensorSpec(name, ["batch", "tokens", hidden]) for name in ("tokens", "modulated", "first")]
            + [TensorSpec("vec", ["batch", hidden])],
            "threshold caches' probe: DiT embedders -> block 0 (its modulated input and its output), and `vec`",
        )
        first_out, vec = TensorSpec("first", ["batch", "tokens", hidden]), TensorSpec("vec", ["batch", hidden])
        latent, t, text = inputs[0], inputs[1], inputs[3]
        specs["rest"] = GraphSpec(
            "rest",
            [latent, t, text, vec, first_out],
            [velocity, hidden_state],
            "DBCache full step after the probe: blocks 1..N -> DiT head (`text` read for its length only)",
        )
        specs["tail"] = GraphSpec(
            "tail",
            [latent, t, vec, hidden_state],
            [velocity],
            "DBCache cached step: the DiT head on a given `hidden`, with the probe's `vec` (no embedders)",
        )
    return specs


@dataclass
class ShapeRanges:
    """min / opt / max of each free dim the graphs were exported and validated for."""

    batch: list[int] = field(default_factory=lambda: [1, 1, 4])
    frames: list[int] = field(default_factory=lambda: [1, 8, 16])
    height: list[int] = field(default_factory=lambda: [8, 32, 64])
    width: list[int] = field(default_factory=lambda: [8, 32, 64])
    text_len: list[int] = field(default_factory=lambda: [1, 8, 32])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShapeRanges:
        return cls(**{k: list(v) for k, v in d.items()})

    def check(self, patch: tuple[int, int, int], **dims: int) -> None:
        """Raise ShapeError if a dim is outside its range or not a multiple of the patch."""
        for name, value in dims.items():
            lo, _, hi = getattr(self, name)
            if not lo <= value <= hi:
                raise ShapeError(
                    f"{name}={value} is outside the bundle's range {lo}..{hi}; re-export with a wider range"
                )
        for name, p in zip(("frames", "height", "width"), patch):
            if name in dims and dims[name] % p:
                raise ShapeError(f"{name}={dims[name]} is not a multiple of the patch size {p}")

    def validate(self, patch: tuple[int, int, int], channels: int | None = None) -> None:
        """Well-formed, multiples of the patch, and (given the latent's channels) within what a manifest may
        declare (`disca.manifest.MAX_LATENT`): checked before an export, not by the manifest after it."""
        from disca.manifest import MAX_LATENT, MAX_WIDTH

        for name in DIMS:
            lo, opt, hi = getattr(self, name)
            if not 1 <= lo <= opt <= hi:
                raise ShapeError(f"range of {name} must satisfy 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
        for name, p in zip(("frames", "height", "width"), patch):
            lo, opt, hi = getattr(self, name)
            if lo % p or opt % p or hi % p:
                raise ShapeError(f"range of {name} {lo}:{opt}:{hi} must be multiples of the patch size {p}")
        if self.text_len[2] > MAX_WIDTH:
            raise ShapeError(f"range of text_len goes up to {self.text_len[2]}, above {MAX_WIDTH} tokens")
        largest = self.batch[2] * (channels or 1) * self.frames[2] * self.height[2] * self.width[2]
        if channels is not None and largest > MAX_LATENT:
            raise ShapeError(
                f"the largest latent of these ranges has {largest} elements, above {MAX_LATENT}: lower the maxima"
            )


def tokens(dims: dict, patch: tuple[int, int, int]) -> int:
    pf, ph, pw = patch
    return (dims["frames"] // pf) * (dims["height"] // ph) * (dims["width"] // pw) + dims["text_len"]


def resolve(spec: TensorSpec, dims: dict, patch: tuple[int, int, int]) -> tuple[int, ...]:
    """Concrete shape of a tensor for concrete dims."""
    return tuple(
        d if isinstance(d, int) else tokens(dims, patch) if d == "tokens" else int(dims[d]) for d in spec.shape
    )


def dummy_inputs(graph: GraphSpec, dims: dict, patch: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic random inputs: unit-normal latents/text/hidden, times in (0, 1) with r <= t."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in graph.inputs:
        shape = resolve(spec, dims, patch)
        if spec.name == "t":
            feeds[spec.name] = rng.uniform(0.05, 1.0, shape).astype(spec.dtype)
        elif spec.name == "r":
            feeds[spec.name] = (feeds["t"] * rng.uniform(0.0, 1.0, shape)).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def export_shapes(ranges: ShapeRanges) -> tuple[dict, dict]:
    """The example shape to trace at and a second shape, different on every axis the ranges allow."""
    first = {d: getattr(ranges, d)[1] for d in DIMS}
    lo, _, hi = ranges.batch
    first["batch"] = min(max(2, lo), hi)  # dynamo specialises a batch of 1
    second = {}
    for d in DIMS:
        lo, _, hi = getattr(ranges, d)
        second[d] = lo if first[d] != lo else hi
    return first, second
