"""Checks of what a caller passes in (options, prompts, arrays): one InputError naming the input.

Zero is never "use the default" (None is); numpy arrays and lists get the same checks.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from disca.errors import InputError


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def positive_int(name: str, value, most: int | None = None) -> int:
    value = _integer(name, value)
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    if most is not None and value > most:
        raise InputError(f"{name} must be <= {most}, got {value}")
    return value


def non_negative_int(name: str, value) -> int:
    value = _integer(name, value)
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")
    return value


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def float_array(name: str, value) -> np.ndarray:
    """A float32 array of finite numbers: a numpy array must have a float dtype; a (nested) list must hold numbers."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            raise InputError(f"{name} must be a float array, got dtype {value.dtype}")
        array = value
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{name} must be an array of numbers: {e}") from None
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: reported just below
        array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or Inf (or values too large for float32)")
    return array


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text (str), got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the prompt is not valid text (invalid bytes, not UTF-8): {prompt!r}") from None
    if "\0" in prompt:
        raise InputError("the prompt contains a NUL character")
    return prompt
