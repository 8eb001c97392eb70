"""`disca-train`: the synthetic task, the teacher, the Restricted MeanFlow student, the cache predictor.

Every training command writes a resumable checkpoint directory to --out: run
the same command again to continue from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import click

from disca.cli._common import FiniteFloat, clean_errors
from disca.cli.export import PRESET_NAMES


class Finite(FiniteFloat):
    """FiniteFloat whose error for nan and inf names the allowed range too."""

    def convert(self, value, param, ctx):
        value = click.FloatRange.convert(self, value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number in the range {self._describe_range()}.", param, ctx)
        return value


POSITIVE = Finite(min=0, min_open=True)
SEED = click.IntRange(0, 2**32 - 1)  # what numpy and torch both take
# The synthetic task's smallest clip, and a largest far above a CPU-trainable one (a bound, not a guess of use:
# --size 100000 would ask for terabytes before any error)
FRAMES, SIZE = click.IntRange(2, 256), click.IntRange(16, 1024)
GUIDANCE = Finite(min=0)


def _device(name: str | None) -> str:
    """--device, checked before any work: a device torch knows and this machine has."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise click.BadParameter(f"expected cpu, cuda or cuda:N, got {name!r}", param_hint="--device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            "CUDA is not available here (no GPU, or torch without CUDA): use --device cpu", param_hint="--device"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise click.BadParameter(
            f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)", param_hint="--device"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise click.BadParameter("MPS is not available here: use --device cpu", param_hint="--device")
    return name


def train_options(fn):
    """Options every training stage shares (they fill TrainArgs)."""
    options = [
        click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint directory (resumed)."),
        click.option(
            "--steps", default=2000, show_default=True, type=click.IntRange(min=1), help="Total optimizer steps."
        ),
        click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1)),
        click.option("--lr", default=2e-4, show_default=True, type=POSITIVE),
        click.option("--warmup", default=200, show_default=True, type=click.IntRange(min=0)),
        click.option("--seed", default=0, show_default=True, type=SEED),
        click.option("--frames", default=8, show_default=True, type=FRAMES, help="Clip frames of the synthetic task."),
        click.option("--size", default=32, show_default=True, type=SIZE, help="Clip height and width."),
        click.option("--ckpt-every", default=100, show_default=True, type=click.IntRange(min=1)),
        click.option(
            "--eval-every",
            default=500,
            show_default=True,
            type=click.IntRange(min=0),
            help="0: evaluate only at the end.",
        ),
        click.option(
            "--eval-n",
            default=16,
            show_default=True,
            type=click.IntRange(min=1),
            help="Clips in the fixed evaluation set.",
        ),
        click.option(
            "--ema",
            default=0.999,
            show_default=True,
            type=Finite(0, 1, max_open=True),
            help="EMA decay of the weights (0: off).",
        ),
        click.option(
            "--guard",
            default=20.0,
            show_default=True,
            type=Finite(min=0),
            help="Stop when the loss or a target's norm rises this many times above its lowest level (0: off).",
        ),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    @clean_errors
    def wrapper(**kw):
        from disca.training.loop import TrainArgs
        from disca.training.state import check_out

        device = _device(kw.pop("device"))
        # every checkpoint replaces --out whole: refuse an --out that holds or sits in something else, up front
        source = kw.get("source")
        inputs = {
            "--teacher": kw.get("teacher_dir"),
            "--student": kw.get("student_dir"),
            "--from": source.partition(":")[2] or None if source else None,
            "--text-embeddings": kw.get("text_embeddings"),
            "--lists": kw.get("lists_from"),
        }
        check_out(kw["out"], inputs)
        fields = [f.name for f in dataclasses.fields(TrainArgs) if f.name != "device"]
        args = TrainArgs(**{k: kw.pop(k) for k in fields if k in kw}, device=device)
        return fn(args=args, **kw)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train DisCa models on the synthetic text-to-video task.

    \b
    disca-train data --out data-preview.gif          look at the task, check the evaluator
    disca-train teacher --out runs/teacher           flow matching, text dropout for CFG
    disca-train distill --teacher runs/teacher --out runs/student
    disca-train predictor --student runs/student --out runs/predictor
    disca-export onnx --checkpoint runs/predictor --out bundles/demo
    """


@main.command("data")
@click.option("--out", type=click.Path(path_type=Path), help="Write a preview GIF of sample clips.")
@click.option(
    "--n", default=500, show_default=True, type=click.IntRange(1, 100_000), help="Clips to check the evaluator on."
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--frames", default=8, show_default=True, type=FRAMES)
@click.option("--size", default=32, show_default=True, type=SIZE)
@clean_errors
def data_cmd(out, n, seed, frames, size):
    """Sample clips of the task and measure the adherence evaluator on them (clean, and blurred + noisy)."""
    import numpy as np

    from disca.runtime.video import write
    from disca.task import degrade, sample_batch, score

    rng = np.random.default_rng(seed)
    clips, prompts, _ = sample_batch(rng, n, frames, size)
    for name, batch in (("clean", clips), ("blur+noise", degrade(clips, rng))):
        s = score(batch, prompts)
        click.echo(
            f"evaluator on {n} {name} clips: "
            + ", ".join(f"{k} {s[k]:.4f}" for k in ("color", "shape", "motion", "all"))
        )
    if out is not None:
        write(out, clips[:8], upscale=4)
        click.echo(f"wrote {out}: " + "; ".join(prompts[:8]))


@main.command("teacher")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="demo", show_default=True)
@click.option(
    "--text-dropout", default=0.1, show_default=True, type=Finite(0, 1), help="Fraction of null prompts (for CFG)."
)
@click.option("--guidance", default=4.0, show_default=True, type=GUIDANCE, help="CFG scale of the evaluation samples.")
@train_options
@clean_errors
def teacher_cmd(args, out, preset, text_dropout, guidance):
    """Train the flow-matching teacher (r-embedder off) with a learned word embedding."""
    from disca.models import preset as get_preset
    from disca.training.teacher import train_teacher

    train_teacher(out, get_preset(preset), args, text_dropout=text_dropout, guidance=guidance)


@main.command("distill")
@click.option("--teacher", "teacher_dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--grid-steps", default=20, show_default=True, type=click.IntRange(min=1), help="The student's sampling steps."
)
@click.option("--shift", default=5.0, show_default=True, type=POSITIVE)
@click.option(
    "--max-gap",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Restriction: longest trained (t, r) interval, in grid steps.",
)
@click.option("--plain", is_flag=True, help="Plain MeanFlow: (t, r) anywhere in [0, 1] (for comparison).")
@click.option("--guidance", default=4.0, show_default=True, type=GUIDANCE, help="CFG scale distilled into the student.")
@click.option(
    "--adaptive-p",
    default=1.0,
    show_default=True,
    type=Finite(min=0),
    help="Adaptive loss weight 1 / (err + c)^p (MeanFlow's p = 1; 0: plain MSE).",
)
@click.option(
    "--end-steps",
    default=4,
    show_default=True,
    type=click.IntRange(min=0),
    help="Intervals that end at the data (r = 0): target from the teacher's ODE in this many Euler steps "
    "(0: the MeanFlow identity, where the teacher's velocity cancels out with an x-prediction head).",
)
@click.option(
    "--ode-gaps/--identity-gaps",
    default=True,
    show_default=True,
    help="Every interval with r < t takes the teacher's ODE over [r, t] as target (--end-steps Euler steps): "
    "no JVP term in any target. --identity-gaps: the MeanFlow identity for 0 < r < t, the original recipe, "
    "which runs away in long runs (README, Training > Distilling longer).",
)
@train_options
@clean_errors
def distill_cmd(args, out, teacher_dir, grid_steps, shift, max_gap, plain, guidance, adaptive_p, end_steps, ode_gaps):
    """Distill a few-step mean-flow student from the teacher with Restricted MeanFlow.

    Every step is logged to OUT/log.jsonl (loss terms, the target's and its JVP term's norms, gradient norm,
    error per t bucket); every --eval-every steps the EMA weights are evaluated and the best kept in OUT/best.
    """
    from disca.training.distill import train_student

    if ode_gaps and not end_steps:
        raise click.BadParameter(
            "needs --end-steps >= 1 (the teacher's Euler steps); with --end-steps 0 add --identity-gaps",
            param_hint="--ode-gaps",
        )
    train_student(
        out,
        teacher_dir,
        args,
        grid_steps,
        shift,
        max_gap,
        plain,
        guidance,
        adaptive_p=adaptive_p,
        end_steps=end_steps,
        ode_gaps=ode_gaps,
    )


@main.command("predictor")
@click.option("--student", "student_dir", type=click.Path(path_type=Path), help="Our distilled student checkpoint.")
@click.option(
    "--from",
    "source",
    help="diffusers:PATH - a local diffusers Wan2.1 / HunyuanVideo transformer directory (frozen host).",
)
@click.option(
    "--text-embeddings",
    type=click.Path(path_type=Path),
    help="With --from: the host's text-encoder states, .npy or .safetensors, (L, Dt) or (N, L, Dt).",
)
@click.option(
    "--latent", default=None, help="With --from: latent F,H,W of the trajectories (default --frames,--size,--size)."
)
@click.option(
    "--predictor-depth",
    type=click.IntRange(min=0),
    help="Predictor blocks after the fusion MLP (default: 2 with --from, the student's config with --student).",
)
@click.option(
    "--forecast",
    is_flag=True,
    help="With --student: the predictor reads the Taylor forecast of the hidden state from the last two anchors "
    "and learns the correction on top of it.",
)
@click.option(
    "--modulate",
    is_flag=True,
    help="With --student: the fusion MLP's hidden layer is modulated by the step's time and text (adaLN), "
    "so a predictor without blocks knows the noise level.",
)
@click.option("--schedule", default="0,1,2,5,9,13,17,19", show_default=True, help="Deployment anchor steps.")
@click.option("--grid-steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--shift", default=5.0, show_default=True, type=POSITIVE)
@click.option(
    "--trajectories",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="Host sampling runs to learn from.",
)
@click.option(
    "--adversarial",
    default=0.0,
    show_default=True,
    type=Finite(min=0),
    help="Weight of the adversarial term (0: off).",
)
@click.option(
    "--velocity-weight",
    default=1.0,
    show_default=True,
    type=Finite(min=0),
    help="Weight of the error measured after the DiT's head (on the velocity), next to the feature error.",
)
@click.option(
    "--max-gap",
    type=click.IntRange(min=1),
    default=None,
    help="Also train on every gap up to this many steps (one predictor for several anchor budgets).",
)
@click.option(
    "--rollout-weight",
    default=0.0,
    show_default=True,
    type=Finite(min=0),
    help="With --forecast: weight of the error of the latent reached after sampling a run of cached steps "
    "with the predictor (0: per-step errors only).",
)
@click.option(
    "--lists",
    "lists_from",
    type=click.Path(path_type=Path),
    default=None,
    help="With --student --forecast: train on the anchor lists searched for this bundle (disca-export "
    "schedule), every budget, their whole runs of cached steps (the lists its deployment runs), instead of "
    "even and warm-up lists.",
)
@click.option(
    "--fine-tune",
    is_flag=True,
    help="With --student: start from the predictor that checkpoint holds (a disca-train predictor output), "
    "keeping its structure.",
)
@train_options
@clean_errors
def predictor_cmd(
    args,
    out,
    student_dir,
    source,
    text_embeddings,
    latent,
    predictor_depth,
    forecast,
    modulate,
    schedule,
    grid_steps,
    shift,
    trajectories,
    adversarial,
    velocity_weight,
    max_gap,
    rollout_weight,
    lists_from,
    fine_tune,
):
    """Train the cache predictor on the frozen host's own trajectories.

    \b
    The host is our distilled student (--student DIR), or a diffusers transformer
    (--from diffusers:PATH) sampled from your text embeddings:
      disca-train predictor --student runs/student --out runs/predictor
      disca-train predictor --from diffusers:wan/transformer --text-embeddings prompts.npy \\
          --latent 4,30,52 --out runs/wan-predictor
      disca-export onnx --from diffusers:wan/transformer --predictor runs/wan-predictor --out bundles/wan
    Fine-tune a trained predictor on the lists searched for its bundle:
      disca-train predictor --student runs/predictor --fine-tune --forecast --lists bundles/demo --out runs/ft
    """
    from disca.runtime.schedule import parse_anchors

    if (student_dir is None) == (source is None):
        raise click.UsageError("give exactly one of --student DIR or --from diffusers:PATH")
    if student_dir is not None and (latent is not None or text_embeddings is not None):
        # the student samples its own task clips and prompts: these shape a diffusers host's runs only
        raise click.UsageError("--latent and --text-embeddings go with --from diffusers:PATH, not --student")
    if max_gap is not None and max_gap >= grid_steps:
        raise click.BadParameter(f"a gap is below --grid-steps ({grid_steps}), got {max_gap}", param_hint="--max-gap")
    anchors = parse_anchors(schedule)
    common = dict(adversarial=adversarial, max_gap=max_gap, trajectories=trajectories, velocity_weight=velocity_weight)
    if student_dir is not None:
        from disca.training.predictor import train_predictor

        train_predictor(
            out,
            student_dir,
            args,
            anchors,
            grid_steps,
            shift,
            depth=predictor_depth,
            forecast=forecast,
            rollout_weight=rollout_weight,
            modulate=modulate,
            lists_from=lists_from,
            fine_tune=fine_tune,
            **common,
        )
        return
    if lists_from is not None or fine_tune:
        raise click.UsageError("--lists and --fine-tune are for our own student (--student DIR) for now")
    if rollout_weight:
        raise click.UsageError("--rollout-weight is for our own student (--student DIR) for now")
    if forecast or modulate:
        raise click.UsageError("--forecast and --modulate are for our own student (--student DIR) for now")
    predictor_depth = 2 if predictor_depth is None else predictor_depth
    kind, _, path = source.partition(":")
    if kind != "diffusers" or not path:
        raise click.BadParameter(f"expected diffusers:PATH, got {source!r}", param_hint="--from")
    if text_embeddings is None:
        raise click.UsageError("--from needs --text-embeddings FILE (the host's text-encoder states)")
    shape = _latent_shape(latent, args.frames, args.size)
    from disca.models.adapters import load_diffusers
    from disca.training.predictor import load_text_embeddings, train_host_predictor

    adapter, _ = load_diffusers(path, predictor_depth=predictor_depth)
    text = load_text_embeddings(text_embeddings, adapter.text_dim)
    train_host_predictor(
        out,
        adapter,
        text,
        args,
        source=source,
        latent=shape,
        depth=predictor_depth,
        anchors=anchors,
        steps=grid_steps,
        shift=shift,
        **common,
    )


def _latent_shape(text: str | None, frames: int, size: int) -> tuple[int, int, int]:
    if text is None:
        return frames, size, size
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"expected F,H,W (latent frames, height, width), got {text!r}", param_hint="--latent")
    return shape


if __name__ == "__main__":
    main()
