"""`disca-export build`: TensorRT engines from a bundle's graphs (a GPU machine with TensorRT)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from disca.cli._common import clean_errors
from disca.cli.export._common import open_to_change


def default_graphs(manifest: dict) -> list[str]:
    """The engines DisCa runs on this bundle: the head too where some gaps reuse the cache or run TaylorSeer."""
    record = manifest.get("cached_steps") or {}
    head = record.get("reuse_gaps") or record.get("taylor_gaps")
    return ["full", "predictor", "head"] if head else ["full", "predictor"]


@click.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--precision", type=click.Choice(["fp16", "fp8"]), required=True, help="Engine precision (its ONNX variant)."
)
@click.option(
    "--graphs",
    help="Which graphs to build, comma-separated (default: full,predictor, and head when the bundle's DisCa "
    "reuses the cache on some gaps).",
)
@click.option("--static", is_flag=True, help="Fixed shape (the ranges' opt): needed for CUDA graphs at run time.")
@click.option(
    "--opt-level", default=3, show_default=True, type=click.IntRange(0, 5), help="Builder optimization level."
)
@click.option("--weight-streaming", is_flag=True, help="Build engines that can stream weights from host memory.")
@clean_errors
def build_cmd(bundle, precision, graphs, static, opt_level, weight_streaming):
    """Build TensorRT engines (engines/<graph>.<precision>.<id>.plan, a fresh name per build) from BUNDLE's graphs.

    Needs TensorRT and an NVIDIA GPU (FP8: compute capability 8.9 or higher). One optimization
    profile per engine from the bundle's shape ranges; a timing cache kept in the bundle.

    \b
    Examples:
      disca-export build bundles/student --precision fp16           # needs a GPU with TensorRT
      disca-export build bundles/student --precision fp8 --static   # needs a GPU with TensorRT
    """
    from disca.exporter.tensorrt_build import build_engines

    b = open_to_change(bundle)
    names = default_graphs(b.manifest) if graphs is None else graphs.split(",")
    names = [g.strip() for g in names if g.strip()]
    if not names or len(set(names)) != len(names):  # nothing to build, or one engine built twice
        raise click.BadParameter(
            f"expected distinct graph names, comma-separated, got {graphs!r}", param_hint="--graphs"
        )
    for g in names:
        if g not in ("full", "predictor", "head", "first"):
            raise click.BadParameter(
                f"{g!r} is not a graph; choose from full, predictor, head, first", param_hint="--graphs"
            )
    console = Console(stderr=True)
    records = build_engines(
        bundle,
        precision,
        names,
        static=static,
        optimization_level=opt_level,
        weight_streaming=weight_streaming,
        log=console.print,
    )
    for r in records:
        console.print(f"[green]built {r['file']}[/green] (TensorRT {r['tensorrt']}, {r['gpu']})")
