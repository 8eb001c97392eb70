"""Print the task evaluator's per-attribute accuracy on N generated clips, clean and noisy+blurred.

python scripts/eval_task_accuracy.py --n 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from disca.task import degrade, sample_batch, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="clips per condition")
    parser.add_argument("--seeds", type=int, default=4, help="the clips are split across this many generator seeds")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.1, help="Gaussian noise std of the degraded condition")
    args = parser.parse_args()

    clips, prompts = [], []
    for seed in range(args.seeds):
        n = args.n // args.seeds + (seed < args.n % args.seeds)
        c, p, _ = sample_batch(np.random.default_rng(seed), n, frames=args.frames, size=args.size)
        clips.append(c)
        prompts += p
    clean = np.concatenate(clips)
    # Generated video looks like this: a little blurry, a little noisy.
    degraded = degrade(clean, np.random.default_rng(10_000), noise_std=args.noise, blur=True)

    print(f"{args.n} clips, {args.frames} frames, {args.size}x{args.size}, seeds 0..{args.seeds - 1}")
    print(f"{'condition':<28}{'color':>8}{'shape':>8}{'motion':>8}{'all':>8}{'s':>7}")
    for name, data in (("clean", clean), (f"blur 3x3 + noise {args.noise}", degraded)):
        start = time.perf_counter()
        r = score(data, prompts)
        took = time.perf_counter() - start
        print(f"{name:<28}{r['color']:>8.4f}{r['shape']:>8.4f}{r['motion']:>8.4f}{r['all']:>8.4f}{took:>7.1f}")


if __name__ == "__main__":
    main()
