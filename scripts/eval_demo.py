"""Quality and cost of the demo models on a fixed prompt x seed set, all on ONNX Runtime CPU.

    python scripts/eval_demo.py --bundle disca/demo --teacher runs/teacher [--plain-bundle B] [--n 64] [--json]

Rows (the same prompts and initial noises for every row):
- real clips: the evaluator's score on rendered clips of the same prompts (its sanity check);
- teacher: 50-step Euler with CFG (two passes per step), its full graph exported here;
- student all-full: 20 steps, one pass each;
- DisCa: the student with the bundle's default anchors, the predictor on the other steps; with --budgets,
  also on the bundle's searched lists of those anchor counts;
- plain MeanFlow student (optional second bundle): 20 steps all-full.
Adherence = every attribute (colour, shape, motion) read back right; PSNR / SSIM of DisCa
against the all-full student; network passes and wall time per clip (batch 1).
"""

from __future__ import annotations

import json
import tempfile
import time

import click
import numpy as np

from disca.bundle import Bundle
from disca.cli._common import FiniteFloat, clean_errors
from disca.manifest import MAX_STEPS
from disca.metrics import psnr, ssim
from disca.runtime import Pipeline
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.sampler import denoise_cfg
from disca.runtime.schedule import budget_anchors
from disca.task import sample_batch, score
from disca.training.evaluation import eval_set


def run_rows(pipe: Pipeline, prompts, noise, anchors) -> tuple[np.ndarray, float, float]:
    """-> clips, ms per clip, network passes per clip."""
    clips, ms, passes = [], 0.0, 0
    for i, p in enumerate(prompts):
        t0 = time.perf_counter()
        video, stats = pipe.denoise(noise[i : i + 1], pipe.embed_prompt(p)[None], anchors=anchors)
        ms += (time.perf_counter() - t0) * 1e3
        passes += stats.full_calls + stats.cached_calls
        clips.append(np.clip(video[0], -1, 1))
    return np.stack(clips), ms / len(prompts), passes / len(prompts)


def export_teacher(teacher_dir: str, out: str) -> Bundle:
    """The teacher's full graph in a bundle (its predictor graph is an untrained placeholder)."""
    from disca.cli.export import main as export_cli

    export_cli(["onnx", "--checkpoint", teacher_dir, "--out", out, "--no-weights"], standalone_mode=False)
    return Bundle.open(out)


def teacher_cfg(bundle: Bundle, prompts, noise, steps: int, shift: float, guidance: float):
    """-> clips, ms per clip of 50-step CFG sampling on ONNX Runtime (two full passes per step)."""
    pipe = Pipeline(bundle, OnnxRuntimeBackend(bundle).activate())
    clips, ms = [], 0.0
    for i, p in enumerate(prompts):
        text = pipe.embed_prompt(p)[None]
        null = pipe.embed_null(text.shape[1])[None]
        x, stats = denoise_cfg(pipe.backend, noise[i : i + 1], text, null, steps=steps, shift=shift, guidance=guidance)
        ms += stats.total_ms
        clips.append(np.clip(x[0], -1, 1))
    pipe.close()
    return np.stack(clips), ms / len(prompts)


def _counts(ctx, param, value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        counts = [0]
    if counts and min(counts) < 1:
        raise click.BadParameter(f"got {value!r}: give anchor counts, comma-separated, e.g. 6,5")
    return counts


@click.command()
@click.option("--bundle", required=True, help="The student + predictor bundle.")
@click.option("--teacher", "teacher_dir", help="Teacher checkpoint (its row is skipped without it).")
@click.option("--plain-bundle", help="A plain-MeanFlow student bundle, for comparison.")
@click.option("--n", default=64, show_default=True, type=click.IntRange(1))
@click.option("--teacher-steps", default=50, show_default=True, type=click.IntRange(1, MAX_STEPS))
@click.option("--guidance", default=4.0, show_default=True, type=FiniteFloat())
@click.option(
    "--budgets",
    default="",
    callback=_counts,
    help="Also DisCa on the bundle's searched lists of these anchor counts, e.g. 6,5.",
)
@click.option("--json", "as_json", is_flag=True)
@clean_errors
def main(bundle, teacher_dir, plain_bundle, n, teacher_steps, guidance, budgets, as_json):
    # Every input is checked before the runs: a bad one would otherwise fail after minutes of sampling.
    student = Bundle.open(bundle)
    if plain_bundle:
        Bundle.open(plain_bundle)
    if teacher_dir:
        from disca.models.checkpoint import read_config

        read_config(teacher_dir)
    for k in budgets:  # e.g. more anchors than the bundle has steps
        budget_anchors(student.manifest, student.schedule.steps, k)
    prompts, noise = eval_set(n, 8, 32)
    report = {"n": n}
    real, real_prompts, _ = sample_batch(np.random.default_rng(1), n, 8, 32)
    report["real_clips"] = {"adherence": score(real, real_prompts)["all"]}

    with Pipeline.load(bundle) as pipe:
        shift = pipe.bundle.schedule.shift
        full, ms_full, p_full = run_rows(pipe, prompts, noise, "full")
        rows = {"disca": (pipe.bundle.schedule.anchors, *run_rows(pipe, prompts, noise, None))}
        for k in budgets:
            anchors, _ = budget_anchors(pipe.bundle.manifest, pipe.bundle.schedule.steps, k)  # its searched k-list
            rows[f"disca_{k}"] = (anchors, *run_rows(pipe, prompts, noise, anchors))
    report["student_full"] = {"adherence": score(full, prompts)["all"], "ms_per_clip": ms_full, "passes": p_full}
    for name, (anchors, clips, ms, passes) in rows.items():
        report[name] = {
            "anchors": list(anchors),
            "adherence": score(clips, prompts)["all"],
            "psnr_vs_full_db": psnr(clips, full),
            "ssim_vs_full": ssim(clips, full),
            "ms_per_clip": ms,
            "passes": passes,
            "speedup_vs_full": ms_full / ms,
        }
    if plain_bundle:
        with Pipeline.load(plain_bundle) as pipe:
            plain, ms_plain, p_plain = run_rows(pipe, prompts, noise, "full")
        report["plain_meanflow_full"] = {"adherence": score(plain, prompts)["all"], "ms_per_clip": ms_plain}
    if teacher_dir:
        with tempfile.TemporaryDirectory() as tmp:
            teacher = export_teacher(teacher_dir, f"{tmp}/teacher")
            clips, ms_teacher = teacher_cfg(teacher, prompts, noise, teacher_steps, shift, guidance)
        report["teacher_cfg"] = {
            "adherence": score(clips, prompts)["all"],
            "ms_per_clip": ms_teacher,
            "passes": 2 * teacher_steps,
        }
        for name in rows:
            report[name]["speedup_vs_teacher"] = ms_teacher / report[name]["ms_per_clip"]

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            click.echo(f"{k}: {v}")


if __name__ == "__main__":
    main()
