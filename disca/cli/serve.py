"""`disca-serve`: serve a bundle on NVIDIA Triton Inference Server (through PyTriton)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from disca.cli._common import batching_options, clean_errors
from disca.cli.run import _backend_options
from disca.runtime import demo_bundle
from disca.runtime.backends import BACKENDS
from disca.serving.repository import MAX_INSTANCES

PORT = click.IntRange(1, 65535)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "fp8"]),
    help="Graph variant (onnxruntime, default fp32) or engine precision (tensorrt, default fp16).",
)
@click.option("--providers", default="cpu", show_default=True, help="ONNX Runtime providers: cpu, cuda, tensorrt.")
@click.option(
    "--threads",
    type=int,
    help="ONNX Runtime intra-op threads per instance (default: all cores; the per-token graphs run on one).",
)
@click.option("--device", default="cpu", show_default=True, help="torch / tensorrt device: cpu, cuda, cuda:1.")
@click.option(
    "--instances", default=1, show_default=True, type=click.IntRange(1, MAX_INSTANCES), help="Model instances."
)
@batching_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--http-port", default=8000, show_default=True, type=PORT)
@click.option("--grpc-port", default=8001, show_default=True, type=PORT)
@click.option("--metrics-port", default=8002, show_default=True, type=PORT)
@click.option("--verbose", is_flag=True, help="Log the start-up and shutdown steps (PyTriton at INFO).")
@clean_errors
def main(
    bundle,
    backend,
    precision,
    providers,
    threads,
    device,
    instances,
    max_batch,
    max_queue_delay_ms,
    host,
    http_port,
    grpc_port,
    metrics_port,
    verbose,
):
    """Serve BUNDLE (default: the demo model) as the Triton model `disca`: HTTP, gRPC, dynamic
    batching, /v2/health/ready, Prometheus metrics. SIGTERM or Ctrl-C drains the requests in flight.

    \b
    Examples:
      disca-serve demo                                  # needs to run until stopped
      disca-serve bundles/student --backend tensorrt --precision fp16 --host 0.0.0.0   # needs TensorRT engines
      disca-run --server localhost:8000 --prompt "a red circle moving left" --out clip.gif   # needs disca-serve
    """
    from disca.serving.server import ServeOptions, serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    opts = ServeOptions(
        bundle=str(bundle or demo_bundle()),
        backend=backend,
        backend_options=_backend_options(backend, providers, threads, precision, False, device),
        instances=instances,
        max_batch=max_batch,
        max_queue_delay_ms=max_queue_delay_ms,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
    )

    def ready():
        click.echo(
            f"disca-serve: model 'disca' ready on http://{host}:{http_port} (gRPC {host}:{grpc_port}, "
            f"metrics http://{host}:{metrics_port}/metrics); Ctrl-C or SIGTERM to stop",
            err=True,
        )

    serve(opts, on_ready=ready)
    click.echo("disca-serve: stopped", err=True)


if __name__ == "__main__":
    main()
