"""What both CLIs share: domain errors become one `Error: ...` line, and range options."""

from __future__ import annotations

import functools
import math

import click

from disca.errors import DiscaError


def clean_errors(fn):
    """Turn the library's domain errors (and a missing optional stack) into click errors: one line, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DiscaError as e:
            raise click.ClickException(str(e)) from None
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            extra = {
                "torch": "torch",
                "onnxscript": "torch",
                "safetensors": "torch",
                "matplotlib": "plot",
                "onnxruntime": "cpu",  # or gpu
                "polygraphy": "tensorrt",
            }.get(root)
            hint = f": pip install 'disca[{extra}]'" if extra else ""
            hint = ": pip install onnx (a dependency of disca itself)" if root == "onnx" else hint
            raise click.ClickException(
                f"this command needs the package {e.name!r}, which is not installed{hint}"
            ) from None

    return wrapper


def given(name: str) -> bool:
    """Whether the user passed the current command's option `name` (its value may equal the default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which compare False with every bound, so pass a range)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


def positive_float() -> FiniteFloat:
    return FiniteFloat(min=0, min_open=True)


def parse_range(text: str, name: str, default_opt: int) -> list[int]:
    """'MIN:MAX', 'MIN:OPT:MAX' or 'N' -> [min, opt, max]; a missing opt is the default clamped into range."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts * 3
    if len(parts) == 2:
        return [parts[0], min(max(default_opt, parts[0]), parts[1]), parts[1]]
    if len(parts) == 3:
        return parts
    raise click.BadParameter(f"expected MIN:MAX, MIN:OPT:MAX or N, got {text!r}", param_hint=f"--{name}")


def batching_options(fn):
    """--max-batch and --max-queue-delay-ms: Triton's batcher, as disca-serve and disca-export triton take it."""
    from disca.serving.repository import MAX_BATCH, MAX_QUEUE_DELAY_MS

    fn = click.option(
        "--max-queue-delay-ms",
        default=2.0,
        show_default=True,
        type=FiniteFloat(0, MAX_QUEUE_DELAY_MS),
        help="Batcher wait.",
    )(fn)
    return click.option(
        "--max-batch", type=click.IntRange(1, MAX_BATCH), help="Requests per Triton batch (default: the bundle's max)."
    )(fn)
