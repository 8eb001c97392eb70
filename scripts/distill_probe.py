"""Probe students per (t, r) interval of the 20-step grid: squared error of u against the MeanFlow identity's
target (what training minimises) and against the truth (the guided teacher's ODE from t to r, 8 Euler steps),
on 4 fixed clips. The EMA weights of each checkpoint are probed (the trained weights with --raw).

    python scripts/distill_probe.py --teacher checkpoints/demo-teacher runs/student runs/student/best
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from disca._atomic import check_writable
from disca.cli._common import clean_errors
from disca.models.checkpoint import load_checkpoint, read_config
from disca.task import sample_batch
from disca.training.distill import meanflow_target
from disca.training.flow import expand, grid, guided_velocity, noisy

# name: (index of t, index of r) on the 20-step grid with shift 5 (t = 1 ... 0.208, 0)
PAIRS = {
    "t.21->0": (19, 20),
    "t.36->0": (18, 20),
    "t.36->.21": (18, 19),
    "t.47->.36": (17, 18),
    "t.68->.63": (14, 15),
    "t.88->.86": (8, 9),
    "t.21 (r=t)": (19, 19),
}


@torch.no_grad()
def truth_velocity(teacher, z, t, r, txt, null, guidance=4.0, steps=8):
    zz = z
    for k in range(steps):
        a, b = t + (r - t) * k / steps, t + (r - t) * (k + 1) / steps
        zz = zz + expand(b - a, zz) * guided_velocity(teacher, zz, a, txt, null, guidance)
    return (z - zz) / expand(t - r, z)


@click.command(help=__doc__.splitlines()[0])
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--teacher", "teacher_dir", required=True, help="The flow-matching teacher's checkpoint.")
@click.option("--n", default=4, show_default=True, type=click.IntRange(1))
@click.option("--raw", is_flag=True, help="Probe the trained weights instead of their EMA.")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="Keep the teacher's side in this file for reruns (same --teacher and --n).",
)
@clean_errors
def main(checkpoints, teacher_dir, n, raw, cache) -> None:
    for path in checkpoints:  # checked before the teacher's side is computed
        read_config(path)
    if cache is not None:
        check_writable(cache, "--cache")
    torch.set_num_threads(1)
    teacher = load_checkpoint(teacher_dir, require_predictor=False)
    tdit, text = teacher.dit.eval(), teacher.text.eval()
    sig = grid(20, 5.0)
    clips, prompts, _ = sample_batch(np.random.default_rng(123), n, 8, 32)
    x = torch.from_numpy(clips)
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        txt = text.encode(prompts)
    null = text.null(n, txt.shape[1])
    cases = torch.load(cache) if cache and cache.is_file() else {}
    for name, (i, j) in PAIRS.items():
        if name in cases:
            continue
        t, r = sig[i].expand(n).clone(), sig[j].expand(n).clone()
        z = noisy(x, e, t)
        v = guided_velocity(tdit, z, t, txt, null, 4.0)
        cases[name] = (z, t, r, v, v if i == j else truth_velocity(tdit, z, t, r, txt, null))
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cases, cache)
    for path in checkpoints:
        student = load_checkpoint(path, require_predictor=False, ema=not raw).dit.eval()
        row = {}
        for name, (z, t, r, v, truth) in cases.items():
            u, target = meanflow_target(student, z, t, r, v, txt)
            u = u.detach()
            row[name] = {"vs_target": float(((u - target) ** 2).mean()), "vs_truth": float(((u - truth) ** 2).mean())}
        print(json.dumps({"checkpoint": path, **row}), flush=True)


if __name__ == "__main__":
    main()
