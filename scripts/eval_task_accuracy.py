"""Print the task evaluator's per-attribute accuracy on N generated clips, clean and noisy+blurred.

python scripts/eval_task_accuracy.py --n 2000
"""

from __future__ import annotations

import time

import click
import numpy as np

from disca.cli._common import FiniteFloat, clean_errors
from disca.task import degrade, sample_batch, score


@click.command(help=__doc__.splitlines()[0])
@click.option("--n", default=2000, show_default=True, type=click.IntRange(1), help="clips per condition")
@click.option(
    "--seeds",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="the clips are split across this many generator seeds",
)
@click.option("--frames", default=8, show_default=True, type=int)
@click.option("--size", default=32, show_default=True, type=int)
@click.option(
    "--noise", default=0.1, show_default=True, type=FiniteFloat(0), help="Gaussian noise std of the degraded condition"
)
@clean_errors
def main(n, seeds, frames, size, noise) -> None:
    clips, prompts = [], []
    for seed in range(seeds):
        k = n // seeds + (seed < n % seeds)
        c, p, _ = sample_batch(np.random.default_rng(seed), k, frames=frames, size=size)
        clips.append(c)
        prompts += p
    clean = np.concatenate(clips)
    # Generated video looks like this: a little blurry, a little noisy.
    degraded = degrade(clean, np.random.default_rng(10_000), noise_std=noise, blur=True)

    print(f"{n} clips, {frames} frames, {size}x{size}, seeds 0..{seeds - 1}")
    print(f"{'condition':<28}{'color':>8}{'shape':>8}{'motion':>8}{'all':>8}{'s':>7}")
    for name, data in (("clean", clean), (f"blur 3x3 + noise {noise}", degraded)):
        start = time.perf_counter()
        r = score(data, prompts)
        took = time.perf_counter() - start
        print(f"{name:<28}{r['color']:>8.4f}{r['shape']:>8.4f}{r['motion']:>8.4f}{r['all']:>8.4f}{took:>7.1f}")


if __name__ == "__main__":
    main()
