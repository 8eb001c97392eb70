"""`disca-export triton`: a standalone Triton model repository serving a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from disca.cli._common import batching_options, clean_errors
from disca.cli.export._common import PRECISIONS
from disca.serving.repository import MAX_INSTANCES


@click.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model repository directory to write.")
@click.option(
    "--backend", type=click.Choice(["onnxruntime", "tensorrt", "torch"]), default="onnxruntime", show_default=True
)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Graph variant (onnxruntime) or engine precision.")
@click.option("--providers", help="onnxruntime providers (default: cuda,cpu with --kind gpu, else cpu).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True, help="Instance kind.")
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_INSTANCES),
    help="Instances per GPU (or node).",
)
@click.option("--gpus", help="GPU ids for the instance group, comma-separated (default: every GPU).")
@batching_options
@click.option("--bundle-path", "reference", help="Reference the bundle at this absolute path on the server; no copy.")
@click.option(
    "--overwrite", is_flag=True, help="Replace a repository that `disca-export triton` wrote at --out (nothing else)."
)
@clean_errors
def triton_cmd(
    bundle,
    out,
    backend,
    precision,
    providers,
    kind,
    instances,
    gpus,
    max_batch,
    max_queue_delay_ms,
    reference,
    overwrite,
):
    """Write a Triton model repository serving BUNDLE as the model `disca` (Python backend running
    disca's runtime), for `tritonserver --model-repository OUT` in NVIDIA's Triton container.

    \b
    Examples:
      disca-export triton demo --out triton-repo --backend tensorrt --precision fp16 --instances 2
    """
    from disca.cli.run import _backend_options
    from disca.serving.repository import write_repository

    if backend == "tensorrt" and kind == "cpu":
        raise click.UsageError(
            "TensorRT engines run on a GPU: use --kind gpu, or --backend onnxruntime with --kind cpu"
        )
    providers = providers or ("cuda,cpu" if kind == "gpu" else "cpu")
    device = "cuda" if kind == "gpu" else "cpu"
    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus is not None else None
    except ValueError:
        raise click.BadParameter(f"expected GPU ids like 0,1, got {gpus!r}", param_hint="--gpus") from None
    if gpu_ids is not None and (any(g < 0 for g in gpu_ids) or len(set(gpu_ids)) != len(gpu_ids)):
        raise click.BadParameter(
            f"expected distinct GPU ids 0, 1, ..., got {gpus!r} (--instances sets the instances per GPU)",
            param_hint="--gpus",
        )
    if gpu_ids and kind != "gpu":
        raise click.UsageError("--gpus needs --kind gpu")
    write_repository(
        bundle,
        out,
        backend=backend,
        backend_options=_backend_options(backend, providers, None, precision, False, device),
        kind=kind,
        instances=instances,
        gpus=gpu_ids,
        max_batch=max_batch,
        max_queue_delay_ms=max_queue_delay_ms,
        reference=reference,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out}: run `tritonserver --model-repository {out}` where disca is installed")
