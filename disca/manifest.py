"""The bundle manifest's schema, declared once (pydantic v2) and checked when a bundle is opened or rewritten.

A bundle is untrusted input (users download and share them): every key's presence, type and
range is checked here before any code reads it, and every path it names must be relative and
stay inside the bundle. Code keeps reading the plain dict; this module only says whether it
is well-formed, in one error naming the key path and what was expected.

Adding an optional key is one line in the right model below: `name: Type | None = None`.
Unknown keys are kept and ignored, so an older disca still opens a bundle that a newer one
annotated with extra records (same schema version).
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from disca.errors import BundleError

FORMAT = "disca-bundle"
SCHEMA_VERSION = 1
MAX_STEPS = 10_000  # far beyond any sampler's use; a bound keeps a hostile or mistyped value from exhausting memory
# The largest latent (batch x channels x frames x height x width, elements) and widths a bundle may declare:
# far above real video models (Wan2.1 720p, 81 frames: 4.8M elements a clip), far below an allocation that
# kills the process when a command runs the graphs at the declared maximum shape (validate, bench).
MAX_LATENT = 1 << 28
MAX_WIDTH = 1 << 16  # hidden_size, text_dim, text_len
MAX_DEPTH = 1024


def check_relative_path(value: str) -> str:
    """A path a manifest names: relative, inside the bundle (lexically; symlinks are checked on disk)."""
    posix = PurePosixPath(value)
    if not value or "\\" in value:
        raise ValueError("expected a non-empty relative path with / separators")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("expected a path without control characters")
    if posix.is_absolute() or PureWindowsPath(value).drive:
        raise ValueError("expected a path relative to the bundle, not an absolute path")
    if ".." in posix.parts:
        raise ValueError("expected a path inside the bundle, without '..'")
    return value


RelPath = Annotated[str, AfterValidator(check_relative_path)]
Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Precision = Literal["fp32", "fp16", "fp8"]
DType = Literal["float32", "float16", "bfloat16", "int64", "int32", "bool"]  # the closed set a graph may declare
Dim = Positive | Literal["batch", "frames", "height", "width", "text_len", "tokens"]  # spec.DIMS + derived tokens
Range = Annotated[list[Positive], Field(min_length=3, max_length=3)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Gap = Annotated[int, Field(ge=1, le=MAX_STEPS)]  # steps since the last anchor
Error = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    # strict: 3 is not "3", true is not 1; NaN and Inf are never a valid number in a manifest.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


class DiT(Section):
    in_channels: Positive
    patch_size: Annotated[list[Positive], Field(min_length=3, max_length=3)]
    hidden_size: Width
    text_dim: Width
    mean_flow: bool


class Predictor(Section):
    """`disca.models.config.PredictorConfig`: the runtime reads `depth` (threads) and `forecast` (what it
    passes as the cache); absent keys take the defaults of older bundles."""

    depth: Annotated[int, Field(ge=0, le=MAX_DEPTH)] | None = None
    residual: bool | None = None
    forecast: bool | None = None
    modulate: bool | None = None


class Model(Section):
    dit: DiT
    predictor: Predictor | None = None
    vocab: Annotated[list[str], Field(min_length=1)] | None = None


class Params(Section):
    dit: Positive
    predictor: Count


class Weights(Section):
    source: str
    dir: RelPath | None = None


class Ranges(Section):
    model_config = ConfigDict(strict=True, extra="forbid")  # read into disca.spec.ShapeRanges field by field

    batch: Range
    frames: Range
    height: Range
    width: Range
    text_len: Range

    @model_validator(mode="after")
    def ordered(self):
        for name in ("batch", "frames", "height", "width", "text_len"):
            lo, opt, hi = getattr(self, name)
            if not lo <= opt <= hi:
                raise ValueError(f"{name} must be [min, opt, max] with min <= opt <= max, got {[lo, opt, hi]}")
        if self.text_len[2] > MAX_WIDTH:
            raise ValueError(f"text_len's maximum {self.text_len[2]} is above {MAX_WIDTH} tokens")
        return self


class Tensor(Section):
    model_config = ConfigDict(strict=True, extra="forbid")  # read into disca.spec.TensorSpec field by field

    name: Annotated[str, Field(min_length=1)]
    shape: list[Dim]
    dtype: DType = "float32"


class Spec(Section):
    name: str
    inputs: Annotated[list[Tensor], Field(min_length=1)]
    outputs: Annotated[list[Tensor], Field(min_length=1)]
    description: str = ""


class Variant(Section):
    file: RelPath
    opset: Positive
    precision: Precision


class Graph(Section):
    spec: Spec
    variants: dict[Precision, Variant]

    @model_validator(mode="after")
    def has_fp32(self):
        if "fp32" not in self.variants:
            raise ValueError("every graph needs an fp32 variant")
        return self


class Schedule(Section):
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)]
    shift: Annotated[float, Field(gt=0)]
    anchors: Annotated[list[Count], Field(min_length=1)]
    searched: bool | None = None

    @model_validator(mode="after")
    def anchors_in_range(self):
        if any(a >= self.steps for a in self.anchors):
            raise ValueError(f"anchors must be step numbers below steps ({self.steps}), got {self.anchors}")
        return self


class Text(Section):
    vocab: Annotated[list[str], Field(min_length=1)]
    file: RelPath


class FileEntry(Section):
    bytes: Count
    sha256: Sha256


class TeaCache(Section):
    coefficients: Annotated[list[float], Field(min_length=1)]


class AnchorLists(Section):
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)]
    lists: dict[str, list[Count]]

    @model_validator(mode="after")
    def well_formed(self):
        """`disca-run --anchors K` runs lists["K"] as it is: it must hold K sorted anchors from step 0."""
        for key, anchors in self.lists.items():
            if not (key.isascii() and key.isdigit() and int(key) == len(anchors) >= 1):
                raise ValueError(f"lists: the list under {_short(key)} must hold that many anchors, got {len(anchors)}")
            if anchors[0] != 0 or anchors != sorted(set(anchors)) or anchors[-1] >= self.steps:
                raise ValueError(
                    f"lists[{_short(key)}] must be increasing step numbers from 0 below steps ({self.steps}), "
                    f"got {_short(anchors)}"
                )
        return self


class GapErrors(Section):
    """One gap's one-step errors in the calibration (`disca.calibration.gaps`): relative MSE of each estimate."""

    gap: Gap
    reuse: Error
    taylor: Error | None = None
    predictor: Error | None = None
    pairs: Count | None = None


class CachedSteps(Section):
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)]
    shift: float | None = None
    reuse_gaps: list[Gap]
    taylor_gaps: list[Gap] | None = None
    forecast_reuse_gaps: list[Gap] | None = None
    errors: list[GapErrors] | None = None


class Engine(Section):
    graph: str
    precision: Literal["fp16", "fp8"]
    file: RelPath
    onnx: str
    onnx_sha256: Sha256
    tensorrt: str
    gpu: str
    compute_capability: Annotated[str, Field(pattern=r"^\d+\.\d+$")]
    static: bool


class Manifest(Section):
    format: Literal["disca-bundle"]
    schema_version: Literal[1]
    model: Model
    params: Params
    weights: Weights
    ranges: Ranges
    graphs: dict[str, Graph]
    schedule: Schedule
    files: dict[RelPath, FileEntry]
    versions: dict[str, str]
    # optional records, written by later commands (and by other disca versions)
    text: Text | None = None
    teacache: TeaCache | None = None
    anchor_lists: AnchorLists | None = None
    cached_steps: CachedSteps | None = None
    engines: dict[str, Engine] | None = None
    thresholds: dict[str, float] | None = None

    @model_validator(mode="after")
    def consistent(self):
        for name in ("full", "predictor"):
            if name not in self.graphs:
                raise ValueError(f"graphs: the {name!r} graph is missing")
        dit = self.model.dit
        for name, graph in self.graphs.items():  # the widths the runtime allocates must be the graphs' own
            for t in graph.spec.inputs:
                want = {"latent": (1, dit.in_channels), "text": (2, dit.text_dim)}.get(t.name)
                if want and (len(t.shape) <= want[0] or t.shape[want[0]] != want[1]):
                    raise ValueError(
                        f"graphs.{name}.spec: input {t.name!r} has shape {t.shape}, which does not match "
                        f"model.dit (in_channels {dit.in_channels}, text_dim {dit.text_dim})"
                    )
        shape = self.ranges
        elements = shape.batch[2] * dit.in_channels * shape.frames[2] * shape.height[2] * shape.width[2]
        if elements > MAX_LATENT:
            raise ValueError(
                f"ranges: the largest latent ({shape.batch[2]} x {dit.in_channels} x {shape.frames[2]} x "
                f"{shape.height[2]} x {shape.width[2]}) is above {MAX_LATENT} elements: re-export with smaller maxima"
            )
        if self.model.vocab and self.text is None:
            # without its table a learned vocabulary would silently fall back to hashed words: another video
            raise ValueError("text: the model has a vocabulary but the manifest has no text table")
        return self


def _short(value: Any) -> str:
    """An untrusted value in a message: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        part = part if not isinstance(part, str) or part.isprintable() else repr(part)  # a key is untrusted text
        if part == "[key]":
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate(manifest: Any, source: str = "manifest.json") -> None:
    """Raise one BundleError naming the first bad key path and what was expected."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f'{source} is not a disca bundle manifest (no "format": "{FORMAT}")')
    version = manifest.get("schema_version")
    if type(version) is not int:
        raise BundleError(f"{source}: schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{source} has schema version {version}, written by a newer disca; this disca reads version "
            f"{SCHEMA_VERSION}: upgrade disca (pip install -U disca)"
        )
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{source} has schema version {version}, this disca reads {SCHEMA_VERSION}: re-export the bundle"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = _where(first["loc"])
        if first["type"] == "missing":
            raise BundleError(f"{source} is malformed: the required key {where} is missing") from None
        got = repr(first.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        got = "" if isinstance(first.get("input"), dict) else f", got {got}"  # a section's own check names its keys
        expected = first["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        at = "" if not first["loc"] else f" at key {where}"
        raise BundleError(f"{source} is malformed{at}: {expected}{got}") from None
