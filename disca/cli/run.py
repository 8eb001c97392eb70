"""`disca-run`: generate a video from a bundle with the DisCa schedule.

Imports only the deploy runtime: runs on a machine without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from disca.bundle import resolve_bundle
from disca.cli._common import clean_errors, given, positive_float
from disca.manifest import MAX_STEPS
from disca.runtime import Pipeline, demo_bundle
from disca.runtime.backends import BACKENDS
from disca.runtime.schedule import POLICIES, THRESHOLD_POLICIES, parse_anchors
from disca.runtime.video import check_frames_size, check_path, write


def _embeddings_path(ctx, param, value: str | None) -> Path | None:
    # Checked as text: click.Path(path_type=Path) would make "" the path "." (then reported as a directory).
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give a .npy file of text embeddings (L, Dt)")
    return None if value is None else Path(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--prompt", help="Text prompt.")
@click.option(
    "--text-embeddings",
    type=click.Path(),
    callback=_embeddings_path,
    help="Precomputed text embeddings (L, Dt) .npy.",
)
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), help="Sampling steps (default: the bundle's schedule).")
@click.option("--shift", type=positive_float(), help="Sigma shift (default: the bundle's schedule).")
@click.option("--schedule", help="Anchor steps, e.g. 0,1,2,5,9,13,17,19, or 'full' for every step full.")
@click.option(
    "--anchors",
    "budget",
    type=click.IntRange(min=1),
    help="Run K full steps: the bundle's searched list of K anchors (else official / uniform).",
)
@click.option(
    "--policy",
    type=click.Choice([p for p in POLICIES if p != "full"]),
    default="disca",
    show_default=True,
    help="What non-anchor steps run: the learned predictor (disca: with the bundle's calibrated per-gap choice; "
    "disca-predictor: on every cached step; disca-adaptive: anchors chosen online, see --threshold), or a "
    "training-free baseline.",
)
@click.option(
    "--threshold",
    type=positive_float(),
    help="Threshold policies: skip while the change stays under this (disca-adaptive: the hidden state's "
    "relative change since the last anchor, default 0.2; teacache 0.5; first-block and dbcache 0.3).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option(
    "--providers",
    default="cpu",
    show_default=True,
    help="ONNX Runtime execution providers, in order: cpu, cuda, tensorrt (comma-separated).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="ONNX Runtime intra-op threads (default: all cores; the per-token graphs, the head and a block-free "
    "predictor, run on one).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "fp8"]),
    help="Graph variant (onnxruntime, default fp32) or engine precision (tensorrt, default fp16).",
)
@click.option("--cuda-graphs", is_flag=True, help="tensorrt: replay each engine as a CUDA graph (static engines).")
@click.option("--device", default="cpu", show_default=True, help="torch backend device: cpu or cuda.")
@click.option("--frames", type=click.IntRange(1), help="Latent frames (default: the bundle's opt shape).")
@click.option("--height", type=click.IntRange(1), help="Latent height.")
@click.option("--width", type=click.IntRange(1), help="Latent width.")
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Videos per run (same prompt, one noise draw).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write the result: .gif, .mp4 or .npy (raw latent).")
@click.option("--fps", default=8, show_default=True, type=click.IntRange(1))
@click.option(
    "--upscale",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Integer upscaling of the written video frames.",
)
@click.option("--verify", is_flag=True, help="Check every bundle file's sha256 before running.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the run statistics as one JSON object (no progress bar): per graph (full, predictor, head, "
    "tail, first) <graph>_calls and ms_per_<graph>; cached_calls (predictor + head + tail), overhead_ms, total_ms, "
    "per_step.",
)
@click.option("--server", help="Run on a disca Triton server (disca-serve) at HOST:PORT instead of locally.")
@click.option("--grpc", is_flag=True, help="With --server: talk gRPC (HOST:GRPC_PORT) rather than HTTP.")
@clean_errors
def main(
    bundle,
    prompt,
    text_embeddings,
    steps,
    shift,
    schedule,
    budget,
    policy,
    threshold,
    seed,
    backend,
    providers,
    threads,
    precision,
    cuda_graphs,
    device,
    frames,
    height,
    width,
    batch,
    out,
    fps,
    upscale,
    verify,
    as_json,
    server,
    grpc,
):
    """Generate a video from BUNDLE: anchor steps run the full DiT, the others the cache predictor
    (or, on the gaps where the bundle's calibration found it closer, the cache through the DiT's head).

    BUNDLE is a bundle directory, or `demo` (the default): the demo model shipped with disca; a
    directory named `demo` in the current directory takes precedence.

    \b
    Examples:
      disca-run --prompt "a red circle moving left" --out clip.gif --upscale 4
      disca-run demo --prompt "a red circle moving left" --schedule full --json
      disca-run demo --prompt "a blue square moving up" --steps 10 --schedule 0,1,3,6
      disca-run demo --prompt "a green triangle moving right" --anchors 5 --policy disca-predictor
      disca-run bundles/student --prompt "a red circle" --backend torch        # needs a bundle with weights
      disca-run bundles/student --prompt "a red circle" --backend tensorrt --precision fp8   # needs TensorRT engines
      disca-run --server localhost:8000 --prompt "a red circle moving left" --out clip.gif  # needs disca-serve
    """
    if bundle is None and server is None:
        bundle = demo_bundle()
    if (prompt is None) == (text_embeddings is None):
        raise click.UsageError("give exactly one of --prompt TEXT or --text-embeddings FILE.npy")
    if schedule is not None and budget is not None:
        raise click.UsageError("give either --schedule (the anchor steps) or --anchors (how many), not both")
    _refuse_unused_options(policy, schedule, budget, backend, server, out)
    if out is not None:
        check_path(out)
        _refuse_overwriting_inputs(out, bundle, text_embeddings)
        if out.suffix.lower() == ".gif" and fps > 50:  # GIF delays are in 1/100 s; players slow < 2/100 s to 10 fps
            raise click.BadParameter(
                "a GIF plays at most 50 frames a second; lower it or write .mp4", param_hint="--fps"
            )
    embeddings = _load_embeddings(text_embeddings) if text_embeddings else None
    anchors = budget if schedule is None else "full" if schedule.strip() == "full" else parse_anchors(schedule)
    if server is not None:
        if bundle is not None or batch != 1:
            raise click.UsageError("with --server the server's bundle runs, one clip per request: drop BUNDLE, --batch")
        request = dict(steps=steps, shift=shift, anchors=budget, schedule=schedule, policy=policy, threshold=threshold)
        result = _remote(server, grpc, prompt, embeddings, seed, frames, height, width, **request)
        return _finish(result, out, fps, upscale, as_json)
    options = _backend_options(backend, providers, threads, precision, cuda_graphs, device)

    with Pipeline.load(bundle, backend=backend, verify=verify, **options) as pipe:
        if out is not None and out.suffix.lower() != ".npy":  # before the run, not after it
            check_frames_size(pipe.latent_shape(frames, height, width, batch), upscale)
        n_steps = steps or pipe.bundle.schedule.steps
        with _progress(n_steps, disable=as_json) as on_step:
            result = pipe.generate(
                prompt,
                text_embeddings=embeddings,
                steps=steps,
                shift=shift,
                anchors=anchors,
                policy=policy,
                threshold=threshold,
                seed=seed,
                frames=frames,
                height=height,
                width=width,
                batch=batch,
                on_step=on_step,
            )
    _finish(result, out, fps, upscale, as_json)


def _refuse_unused_options(policy, schedule, budget, backend, server, out) -> None:
    """An option that would change nothing in this run is an error, not a silent no-op: the user meant something."""

    def refuse(option: str, why: str):
        raise click.UsageError(f"{option} {why}: drop it")

    threshold_policy = policy in THRESHOLD_POLICIES
    if given("threshold") and not threshold_policy:
        refuse("--threshold", f"applies to the threshold policies ({', '.join(THRESHOLD_POLICIES)}), not {policy}")
    if schedule is not None and schedule.strip() == "full" and given("policy"):
        refuse("--policy", "does nothing with --schedule full (every step runs the full DiT)")
    if threshold_policy and (schedule is not None or budget is not None):
        refuse("--schedule" if schedule is not None else "--anchors", f"does nothing: {policy} chooses anchors online")
    if server is not None:
        for name in ("backend", "providers", "threads", "precision", "cuda_graphs", "device", "verify"):
            if given(name):
                refuse(f"--{name.replace('_', '-')}", "does nothing with --server (the server's backend runs)")
        return
    for name, backends in (
        ("providers", ("onnxruntime",)),
        ("threads", ("onnxruntime",)),
        ("cuda_graphs", ("tensorrt",)),
        ("device", ("torch", "tensorrt")),
    ):
        if given(name) and backend not in backends:
            refuse(f"--{name.replace('_', '-')}", f"is for --backend {' or '.join(backends)}, not {backend}")
    for name in ("fps", "upscale"):
        if given(name) and (out is None or out.suffix.lower() == ".npy"):
            refuse(
                f"--{name}",
                "applies to a video written with --out (.gif or .mp4), not "
                + ("the raw .npy latent" if out else "no output"),
            )


def _refuse_overwriting_inputs(out: Path, bundle, text_embeddings) -> None:
    """--out must not replace what the run reads: a file of the bundle (the installed demo included) or the
    text embeddings."""
    target = out.resolve()
    if text_embeddings is not None and target == Path(text_embeddings).resolve():
        raise click.BadParameter("is the --text-embeddings file: write the result elsewhere", param_hint="--out")
    if bundle is not None:
        root = resolve_bundle(bundle).resolve()
        if target == root or root in target.parents:
            raise click.BadParameter(
                f"{out} is inside the bundle {root}: write the result elsewhere", param_hint="--out"
            )


def _finish(result, out, fps, upscale, as_json) -> None:
    """Write the video and print the statistics: a local or a server's result alike."""
    if out is not None:
        write(out, result.video, fps=fps, upscale=upscale)
    stats = result.stats if isinstance(result.stats, dict) else result.stats.to_dict()
    if as_json:
        click.echo(json.dumps({**stats, "anchors": result.anchors, "out": str(out) if out else None}))
    else:
        _print_summary(stats, out)


def _remote(server, grpc, prompt, embeddings, seed, frames, height, width, **request):
    """The same request, answered by a disca Triton server (disca-serve, or a `disca-export triton` repository)."""
    from disca.client import Client

    with Client(server, grpc=grpc) as client:
        return client.generate(
            prompt, text_embeddings=embeddings, seed=seed, frames=frames, height=height, width=width, **request
        )


def _backend_options(backend, providers, threads, precision, cuda_graphs, device) -> dict:
    if backend == "torch":
        if precision not in (None, "fp32"):
            raise click.UsageError("the torch backend runs the fp32 weights: drop --precision or pick another backend")
        return {"device": device}
    if backend == "tensorrt":
        if precision == "fp32":
            raise click.UsageError("TensorRT engines are fp16 or fp8: pass --precision fp16 or fp8")
        return {
            "precision": precision or "fp16",
            "cuda_graphs": cuda_graphs,
            "device": "cuda" if device == "cpu" else device,
        }
    return {"providers": providers.split(","), "threads": threads, "precision": precision or "fp32"}


def _load_embeddings(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise click.ClickException(f"cannot read text embeddings {path}: {e}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        got = f"dtype {array.dtype}" if isinstance(array, np.ndarray) else "an .npz archive"
        raise click.ClickException(f"text embeddings {path} must be one float array (L, Dt) in .npy, got {got}")
    return array


class _progress:
    """A rich progress bar that shows, per step, whether it ran the full DiT or the predictor."""

    def __init__(self, steps: int, disable: bool):
        self.steps, self.counts = steps, {"full": 0, "cached": 0}
        self.bar = Progress(
            TextColumn("[bold]denoising"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=disable,
            transient=False,
        )

        self.task = None

    def __enter__(self):
        return self.on_step

    def __exit__(self, *exc):
        if self.task is not None:
            self.bar.stop()

    def on_step(self, step: int, graph: str, ms: float) -> None:
        if self.task is None:  # started by the first step, so that input errors never follow an empty bar
            self.bar.start()
            self.task = self.bar.add_task("denoise", total=self.steps, last="")
        full = graph == "full"
        self.counts["full" if full else "cached"] += 1
        kind = "[red]full[/red]" if full else "[cyan]cached[/cyan]"
        last = f"step {step}: {kind} {ms:.1f} ms | full {self.counts['full']}, cached {self.counts['cached']}"
        self.bar.update(self.task, advance=1, last=last)


GRAPH_NAMES = {  # the --json fields <graph>_calls / ms_per_<graph>, as the summary table names them
    "full": "full (the DiT)",
    "predictor": "predictor (cached)",
    "head": "head (cached, reused)",
    "tail": "tail (cached, DBCache)",
    "first": "first (probe, block 0)",
}


def _print_summary(s: dict, out) -> None:
    title = f"{s['backend']} · {s['policy']} · {s['steps']} steps"
    table = Table("graph", "calls", "ms / call", "ms total", title=title)
    for graph, name in GRAPH_NAMES.items():
        calls, per = s[f"{graph}_calls"], s[f"ms_per_{graph}"]
        if calls:
            table.add_row(name, str(calls), f"{per:.2f}", f"{calls * per:.1f}")
    table.add_row("runtime overhead", "", "", f"{s['overhead_ms']:.2f}")
    table.add_row("total", "", "", f"{s['total_ms']:.1f}")
    console = Console()
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")
