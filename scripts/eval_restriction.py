"""What the restriction buys: students sampled at several step counts (all-full) and with DisCa, against the teacher.

    python scripts/eval_restriction.py --teacher checkpoints/demo-teacher [--n 64] [--steps 20,8,4,2] \
        [--cache teacher.npz] [--json] NAME=CHECKPOINT ...

--teacher-rows adds the teacher's own CFG sampling at fewer steps (two network passes a step).
Each NAME=CHECKPOINT is a training checkpoint directory (torch, EMA weights: no export needed), a distilled
student or a predictor run (a student + its predictor); a predictor run adds the DisCa row: 20 steps with
the full DiT on --anchors, the predictor on the other steps (the torch sampler's DiscaPolicy, as the training
evaluation runs it: no calibrated reuse gaps). Every row samples the same prompts and initial noises
(`eval_set`, the training evaluation's set); adherence is the evaluator's (`disca.task.score`, every attribute
right), PSNR is against the teacher's own clip from the same noise (--teacher-steps Euler steps, CFG --guidance).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from disca._atomic import check_writable
from disca.cli._common import FiniteFloat, clean_errors, positive_float
from disca.errors import DiscaError
from disca.manifest import MAX_STEPS
from disca.metrics import psnr
from disca.models.checkpoint import load_checkpoint, read_config
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import OFFICIAL_ANCHORS, DiscaPolicy, FullPolicy, check_anchors, parse_anchors
from disca.task import score
from disca.training.evaluation import eval_set
from disca.training.flow import sample_teacher, to_numpy_clips

FRAMES, SIZE = 8, 32


def teacher_clips(teacher_dir, prompts, noise, steps: int, shift: float, guidance: float, cache: Path | None):
    """The teacher's CFG clips for (prompts, noise); kept in `cache` for reruns with the same settings."""
    key = {
        "teacher": str(Path(teacher_dir).resolve()),
        "n": len(prompts),
        "steps": steps,
        "shift": shift,
        "guidance": guidance,
    }
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            if json.loads(str(f["key"])) == key:
                return f["clips"]
    teacher = load_checkpoint(teacher_dir, require_predictor=False)
    with torch.no_grad():
        txt = teacher.text.encode(prompts)
        null = teacher.text.null(len(prompts), txt.shape[1])
    clips = to_numpy_clips(sample_teacher(teacher.dit, torch.from_numpy(noise), txt, null, steps, shift, guidance))
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, clips=clips, key=json.dumps(key))
        tmp.replace(cache)
    return clips


def student_rows(ckpt_dir, prompts, noise, reference, steps_list, anchors, shift: float) -> list[dict]:
    """One row per step count (all-full), plus DisCa when the checkpoint holds a predictor."""
    ckpt = load_checkpoint(ckpt_dir, require_predictor=False)
    if not ckpt.cfg.dit.mean_flow or ckpt.text is None:
        raise click.ClickException(f"{ckpt_dir} is not a distilled student (nor a predictor run on one)")
    with torch.no_grad():
        txt = ckpt.text.encode(prompts).numpy()
    runs = [(f"{s} steps", s, FullPolicy()) for s in steps_list]
    if ckpt.predictor is not None:
        runs.append((f"DisCa {len(anchors)} of 20", 20, DiscaPolicy(anchors)))
    rows = []
    with TorchBackend.from_modules(ckpt.dit, ckpt.predictor) as backend:
        for name, steps, policy in runs:
            clips, stats = denoise(backend, noise, txt, steps=steps, shift=shift, policy=policy)
            clips = np.clip(clips, -1, 1)
            rows.append(
                {
                    "sampling": name,
                    "full_passes": stats.full_calls,
                    "predictor_passes": stats.cached_calls,
                    "adherence": score(clips, prompts)["all"],
                    "psnr_vs_teacher_db": psnr(clips, reference),
                }
            )
    return rows


def markdown(teacher: dict, n: int, results: dict[str, list[dict]]) -> str:
    """Models as rows, samplings as columns: 'adherence / PSNR dB against the reference' per cell."""
    columns = list(dict.fromkeys(r["sampling"] for rows in results.values() for r in rows))
    lines = [
        f"reference: the teacher, {teacher['steps']} steps CFG {teacher['guidance']:g}, adherence "
        f"{teacher['adherence']:.3f} on {n} prompts; cells: adherence / PSNR (dB) against it",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, rows in results.items():
        cells = {r["sampling"]: f"{r['adherence']:.3f} / {r['psnr_vs_teacher_db']:.1f}" for r in rows}
        lines.append(f"| {name} | " + " | ".join(cells.get(c, "") for c in columns) + " |")
    return "\n".join(lines)


def _step_counts(ctx, param, value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        counts = [0]
    if counts and not all(1 <= c <= MAX_STEPS for c in counts):
        raise click.BadParameter(f"got {value!r}: give step counts (1..{MAX_STEPS}), comma-separated, e.g. 20,8")
    return counts


def _anchor_list(ctx, param, value: str) -> list[int]:
    try:  # callbacks run while click parses, outside clean_errors: pass the error on as click's
        return check_anchors(parse_anchors(value), 20)
    except DiscaError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.argument("students", nargs=-1, required=True)
@click.option("--teacher", "teacher_dir", required=True, help="The flow-matching teacher's checkpoint.")
@click.option(
    "--n",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Prompts x seeds (the training evaluation's set).",
)
@click.option(
    "--steps", "steps_list", default="20,8,4,2", show_default=True, callback=_step_counts, help="All-full step counts."
)
@click.option(
    "--anchors",
    default=",".join(map(str, OFFICIAL_ANCHORS[(20, 8)])),
    show_default=True,
    callback=_anchor_list,
    help="DisCa's full steps of 20 (for checkpoints with a predictor).",
)
@click.option("--shift", default=5.0, show_default=True, type=positive_float())
@click.option("--teacher-steps", default=50, show_default=True, type=click.IntRange(1, MAX_STEPS))
@click.option("--guidance", default=4.0, show_default=True, type=FiniteFloat())
@click.option(
    "--teacher-rows",
    default="",
    callback=_step_counts,
    help="Also sample the teacher (CFG) at these step counts, e.g. 20,8.",
)
@click.option("--cache", type=click.Path(path_type=Path), help="Keep the teacher's clips here for reruns.")
@click.option("--json", "as_json", is_flag=True)
@clean_errors
def main(students, teacher_dir, n, steps_list, anchors, shift, teacher_steps, guidance, teacher_rows, cache, as_json):
    named = []
    for arg in students:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"'{arg}': give each student as NAME=CHECKPOINT_DIR", param_hint="STUDENTS")
        named.append((name, path))
    if not steps_list:
        raise click.BadParameter("is empty: give step counts, e.g. 20,8", param_hint="--steps")
    for path in (teacher_dir, *(path for _, path in named)):  # now, not after the teacher's sampling
        read_config(path)
    if cache is not None:
        check_writable(cache, "--cache")
    torch.set_num_threads(1)
    prompts, noise = eval_set(n, FRAMES, SIZE)
    reference = teacher_clips(teacher_dir, prompts, noise, teacher_steps, shift, guidance, cache)
    teacher = {"steps": teacher_steps, "guidance": guidance, "adherence": score(reference, prompts)["all"]}
    results = {}
    if teacher_rows:  # what cutting the teacher's own steps gives (two passes a step)
        rows = []
        for steps in teacher_rows:
            clips = teacher_clips(teacher_dir, prompts, noise, steps, shift, guidance, None)
            rows.append(
                {
                    "sampling": f"{steps} steps",
                    "full_passes": 2 * steps,
                    "predictor_passes": 0,
                    "adherence": score(clips, prompts)["all"],
                    "psnr_vs_teacher_db": psnr(clips, reference),
                }
            )
        results[f"teacher, CFG {guidance:g}"] = rows
    for name, path in named:
        results[name] = student_rows(path, prompts, noise, reference, steps_list, anchors, shift)
    if as_json:
        click.echo(json.dumps({"n": n, "teacher": teacher, "students": results}, indent=2))
    else:
        click.echo(markdown(teacher, n, results))


if __name__ == "__main__":
    main()
