"""Predictor checkpoints on fixed anchor lists: PSNR against all-full sampling on held-out clips.

    python scripts/ablate_predictor.py --samples 8 checkpoints/demo-predictor runs/predictor-anchor
    python scripts/ablate_predictor.py --samples 8 --taylorseer checkpoints/demo-predictor   # + training-free rows

Each checkpoint's student samples the bench's held-out clips (`disca-bench`'s seed) all-full and with the
predictor on every cached step (`disca-predictor`) on each list, with the torch backend; `--taylorseer` adds
TaylorSeer-1 / -2 on the anchors for the first checkpoint. One line per (checkpoint, list); the README's
ablation table (Benchmark against the training-free caches) was made with it.
"""

from __future__ import annotations

import click

from disca.cli._common import clean_errors

LISTS = {
    "[0, 1, 3, ..., 17] (10)": [0, 1, 3, 5, 7, 9, 11, 13, 15, 17],
    "even 10": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
    "even 12": [0, 2, 3, 5, 7, 8, 10, 12, 13, 15, 17, 18],
    "warm-up 8": [0, 1, 4, 7, 10, 13, 16, 19],
    "even 8": [0, 2, 5, 8, 10, 12, 15, 18],
    "[0, 1, 5, ..., 17] (6)": [0, 1, 5, 9, 13, 17],
    "even 6": [0, 3, 7, 10, 13, 17],
    "even 4": [0, 5, 10, 15],
}


@click.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--samples", default=8, show_default=True, type=click.IntRange(1))
@click.option(
    "--seed",
    default=None,
    type=click.IntRange(0),
    help="Clips of another seed than the bench's (to choose without its clips).",
)
@click.option("--taylorseer", is_flag=True, help="Also TaylorSeer-1 / -2 on the anchors (first checkpoint's student).")
@clean_errors
def main(checkpoints, samples, seed, taylorseer):
    from disca.benchmark import BENCH_SEED, _run_all
    from disca.bundle import Bundle
    from disca.calibration.dataset import calibration_set
    from disca.metrics import psnr
    from disca.models import load_checkpoint
    from disca.runtime import demo_bundle
    from disca.runtime.backends.torch_backend import TorchBackend
    from disca.runtime.schedule import FullPolicy, make_policy

    steps, shift = 20, 5.0
    seed = BENCH_SEED if seed is None else seed
    loaded = [load_checkpoint(path) for path in checkpoints]  # a bad one fails now, not after the others' runs
    cal = calibration_set(Bundle.open(demo_bundle()), n=samples, seed=seed)  # the demo's prompts and text
    for i, (path, ck) in enumerate(zip(checkpoints, loaded)):
        runs = [("all-full", FullPolicy)]
        for name, anchors in LISTS.items():
            runs.append((f"{path} | {name}", lambda a=anchors: make_policy("disca-predictor", a)))
            if taylorseer and i == 0:
                for order in (1, 2):
                    runs.append(
                        (f"taylorseer{order} | {name}", lambda a=anchors, o=order: make_policy(f"taylorseer{o}", a))
                    )
        with TorchBackend.from_modules(ck.dit, ck.predictor) as backend:
            results = _run_all(backend, cal, [factory for _, factory in runs], steps, shift, lambda msg: None)
        reference = results[0][0]
        for (name, _), (outs, _, _) in zip(runs[1:], results[1:]):
            click.echo(f"{name}: {psnr(outs, reference):.2f} dB")


if __name__ == "__main__":
    main()
