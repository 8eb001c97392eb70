"""What the `disca-export` commands share: presets, precisions, bundles opened to change, calibration sets."""

from __future__ import annotations

import click

from disca._atomic import check_writable
from disca.bundle import Bundle, resolve_bundle

PRESET_NAMES = ("tiny", "demo")  # kept in step with disca.models.config.PRESETS (tested)
PRECISIONS = ("fp32", "fp16", "fp8")  # kept in step with disca.exporter.precision.PRECISIONS (tested)


def open_to_change(path) -> Bundle:
    """Open a bundle that a command will rewrite (not the shipped demo): checked writable before any work."""
    b = Bundle.open(resolve_bundle(path, write=True))
    check_writable(b.path, "bundle", directory=True)
    return b


MAX_SAMPLES = 10_000  # prompt x seed clips of a calibration or bench set


def samples_option(default: int, help: str):
    """--samples of the commands that sample a calibration set: at least one, and a bound (the set's noise is
    drawn up front: 10^10 clips would hang on the allocation)."""
    return click.option("--samples", default=default, show_default=True, type=click.IntRange(1, MAX_SAMPLES), help=help)


def calibration_samples(bundle, prompts, samples, seed=0):
    from disca.calibration.dataset import calibration_set, read_prompts

    return calibration_set(bundle, read_prompts(prompts) if prompts else None, n=samples, seed=seed)


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False
