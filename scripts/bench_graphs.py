"""One graph call at a time: ms per call of the full, predictor and head graphs of one or more bundles,
through disca's ONNX Runtime backend (its session options), calls interleaved round by round so that
bundles compared in one run share the machine's state; each figure is the median over --repeats.

    python scripts/bench_graphs.py disca/demo old-demo --repeats 200   # e.g. a graph change, before / after

Unlike scripts/bench_core.py (whole sampling runs) this times the bare session calls, without the runtime's
per-step work, at one input shape (the demo's clip, batch 1).
"""

from __future__ import annotations

import statistics
import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from disca.bundle import Bundle
from disca.cli._common import clean_errors
from disca.runtime.backends import get_backend

GRAPHS = ("full", "predictor", "head")


def _feeds(bundle: Bundle, frames: int, size: int, text_len: int) -> dict:
    dit = bundle.manifest["model"]["dit"]
    pf, ph, pw = dit["patch_size"]
    tokens = (frames // pf) * (size // ph) * (size // pw) + text_len
    rng = np.random.default_rng(0)
    values = {
        "latent": rng.standard_normal((1, dit["in_channels"], frames, size, size)),
        "t": np.array([0.6]),
        "r": np.array([0.5]),
        "text": rng.standard_normal((1, text_len, dit["text_dim"])),
        "hidden": rng.standard_normal((1, tokens, dit["hidden_size"])),
    }
    return {k: v.astype(np.float32) for k, v in values.items()}


@click.command()
@click.argument("bundles", nargs=-1, required=True)
@click.option("--repeats", default=100, show_default=True, type=click.IntRange(1))
@click.option("--frames", default=8, show_default=True, type=click.IntRange(1))
@click.option("--size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--text-len", default=8, show_default=True, type=click.IntRange(1))
@clean_errors
def main(bundles, repeats, frames, size, text_len):
    opened = {path: Bundle.open(path) for path in bundles}  # every path checked before a session loads
    for bundle in opened.values():  # a shape the graphs refuse would fail in ONNX Runtime, mid-run
        bundle.ranges.check(bundle.patch, frames=frames, height=size, width=size, text_len=text_len)
    backends, feeds = {}, {}
    for path, bundle in opened.items():
        backends[path] = get_backend("onnxruntime", bundle).__enter__()
        values = _feeds(bundle, frames, size, text_len)
        feeds[path] = {g: {i.name: values[i.name] for i in backends[path].sessions[g].get_inputs()} for g in GRAPHS}
    times = {(p, g): [] for p in bundles for g in GRAPHS}
    for k in range(repeats + 5):  # the first rounds warm up and are dropped
        for p in bundles:
            for g in GRAPHS:
                session = backends[p].sessions[g]
                t0 = time.perf_counter()
                session.run(None, feeds[p][g])
                if k >= 5:
                    times[p, g].append((time.perf_counter() - t0) * 1e3)
    table = Table("bundle", *(f"ms / {g} call" for g in GRAPHS), "predictor / full", "head / full")
    for p in bundles:
        med = {g: statistics.median(times[p, g]) for g in GRAPHS}
        table.add_row(
            p,
            *(f"{med[g]:.3f}" for g in GRAPHS),
            f"{med['predictor'] / med['full']:.1%}",
            f"{med['head'] / med['full']:.1%}",
        )
    for b in backends.values():
        b.__exit__(None, None, None)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
