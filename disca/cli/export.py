"""`disca-export`: turn a model into a deployable bundle, and look inside bundles.

torch is imported only by the commands that need it: `inspect` runs on a deploy machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from disca.bundle import Bundle
from disca.cli._common import clean_errors, parse_range
from disca.spec import DIMS, ShapeRanges

PRESET_NAMES = ("tiny", "demo")  # kept in step with disca.models.config.PRESETS (tested)
PRECISIONS = ("fp32", "fp16", "fp8")  # kept in step with disca.exporter.precision.PRECISIONS (tested)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disca")
def main():
    """Export DisCa models to bundles of two ONNX graphs, and inspect bundles."""


@main.command("onnx")
@click.option(
    "--preset", type=click.Choice(PRESET_NAMES), help="Export an untrained model of this preset (random weights)."
)
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Export a trained checkpoint directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option(
    "--opset",
    type=click.Choice(["23", "20"]),
    default="23",
    show_default=True,
    help="23: native Attention/RMSNormalization (TensorRT >= 10.14); 20: decomposed, older runtimes.",
)
@click.option("--batch", default="1:1:4", show_default=True, help="Batch range MIN:MAX or MIN:OPT:MAX.")
@click.option("--frames", default=None, help="Latent frame range (default 1:8:16 in patch multiples).")
@click.option("--height", default=None, help="Latent height range (default 8:32:64).")
@click.option("--width", default=None, help="Latent width range (default 8:32:64).")
@click.option("--text-len", default="1:8:32", show_default=True, help="Text-token count range.")
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    help="Graph variants, comma-separated from fp32,fp16,fp8 (fp32 is always written).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights with --preset.")
@click.option("--no-weights", is_flag=True, help="Leave the PyTorch weights out (no torch backend for this bundle).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--verbose", is_flag=True, help="Show the exporter's own output.")
@clean_errors
def onnx_cmd(
    preset,
    checkpoint,
    out,
    opset,
    batch,
    frames,
    height,
    width,
    text_len,
    precision,
    seed,
    no_weights,
    overwrite,
    verbose,
):
    """Export the DiT and its cache predictor to a bundle: full.onnx + predictor.onnx + manifest.json.

    Both graphs are validated on ONNX Runtime against PyTorch at two shapes. FP16 and FP8
    variants (for TensorRT engines) are validated the same way, with looser tolerances.

    \b
    Examples:
      disca-export onnx --preset demo --out bundles/demo
      disca-export onnx --checkpoint runs/student --out bundles/student --precision fp32,fp16,fp8
      disca-export onnx --checkpoint runs/student --out bundles/student --frames 4:16 --opset 20
    """
    if (preset is None) == (checkpoint is None):
        raise click.UsageError("give exactly one of --preset NAME or --checkpoint DIR")
    if out.exists() and not overwrite:
        raise click.ClickException(f"{out} already exists: choose another --out or pass --overwrite")
    precisions = ["fp32", *(p.strip().lower() for p in precision.split(",") if p.strip() not in ("", "fp32"))]
    for p in precisions:
        if p not in PRECISIONS:
            choices = ", ".join(PRECISIONS)
            raise click.BadParameter(f"{p!r} is not a precision; choose from {choices}", param_hint="--precision")

    from disca.exporter import export_bundle
    from disca.models import build, load_checkpoint, randomize_
    from disca.models import preset as get_preset

    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        cfg, dit, predictor, text = ckpt.cfg, ckpt.dit, ckpt.predictor, ckpt.text
        note = f"checkpoint {checkpoint}"
    else:
        cfg = get_preset(preset)
        dit, predictor = build(cfg)
        randomize_(dit, seed)
        randomize_(predictor, seed + 1)
        text = None
        note = f"preset {preset}, random untrained weights (seed {seed})"
    defaults, patch = ShapeRanges(), cfg.dit.patch_size
    given = {"batch": batch, "frames": frames, "height": height, "width": width, "text_len": text_len}
    ranges = {}
    for dim in DIMS:
        default = getattr(defaults, dim)
        p = dict(zip(("frames", "height", "width"), patch)).get(dim, 1)
        if given[dim] is None:  # default range, snapped to the patch
            default = [max(p, v // p * p) for v in default]
        ranges[dim] = parse_range(given[dim], dim.replace("_", "-"), default[1]) if given[dim] else default
    console = Console(stderr=True)
    export_bundle(
        cfg,
        dit,
        predictor,
        out,
        text=text,
        opset=int(opset),
        ranges=ShapeRanges(**ranges),
        precisions=tuple(precisions),
        weights_note=note,
        include_weights=not no_weights,
        verbose=verbose,
        log=console.print,
    )
    console.print(f"[green]wrote bundle {out}[/green] ({note})")


@main.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--precision", type=click.Choice(["fp16", "fp8"]), required=True, help="Engine precision (its ONNX variant)."
)
@click.option("--graphs", default="full,predictor", show_default=True, help="Which graphs to build, comma-separated.")
@click.option("--static", is_flag=True, help="Fixed shape (the ranges' opt): needed for CUDA graphs at run time.")
@click.option(
    "--opt-level", default=3, show_default=True, type=click.IntRange(0, 5), help="Builder optimization level."
)
@click.option("--weight-streaming", is_flag=True, help="Build engines that can stream weights from host memory.")
@clean_errors
def build_cmd(bundle, precision, graphs, static, opt_level, weight_streaming):
    """Build TensorRT engines (engines/<graph>.<precision>.plan) from BUNDLE's ONNX graphs.

    Needs TensorRT and an NVIDIA GPU (FP8: compute capability 8.9 or higher). One optimization
    profile per engine from the bundle's shape ranges; a timing cache kept in the bundle.

    \b
    Examples:
      disca-export build bundles/student --precision fp16
      disca-export build bundles/student --precision fp8 --static
    """
    from disca.exporter.tensorrt_build import build_engines

    names = [g.strip() for g in graphs.split(",") if g.strip()]
    for g in names:
        if g not in ("full", "predictor"):
            raise click.BadParameter(f"{g!r} is not a graph; choose from full, predictor", param_hint="--graphs")
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


@main.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def inspect_cmd(bundle, as_json):
    """Show a bundle's graphs, I/O, shape ranges, parameter counts and schedule, and verify its files' hashes.

    Exits non-zero if a file does not match its sha256.
    """
    b = Bundle.open(bundle)
    hashes = b.verify_hashes()
    params = b.manifest["params"]
    report = {
        "path": str(b.path),
        "model": b.model,
        "weights": b.manifest["weights"],
        "params": {**params, "predictor_to_dit": params["predictor"] / params["dit"]},
        "graphs": {
            name: {
                "inputs": g["spec"]["inputs"],
                "outputs": g["spec"]["outputs"],
                "variants": {p: {k: v[k] for k in ("file", "opset")} for p, v in g["variants"].items()},
            }
            for name, g in b.manifest["graphs"].items()
        },
        "ranges": b.manifest["ranges"],
        "schedule": b.manifest["schedule"],
        "engines": {
            k: {f: e[f] for f in ("file", "tensorrt", "gpu", "compute_capability", "static")}
            for k, e in b.manifest.get("engines", {}).items()
        },
        "files": {f: {"bytes": e["bytes"], "sha256_ok": hashes[f]} for f, e in b.manifest["files"].items()},
        "versions": b.manifest["versions"],
        "ok": all(hashes.values()),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if not report["ok"]:
        bad = ", ".join(f for f, ok in hashes.items() if not ok)
        raise click.ClickException(f"files do not match their sha256 in the manifest: {bad}")


def _print_report(r: dict) -> None:
    console = Console()
    p = r["params"]
    console.print(f"[bold]{r['path']}[/bold]  ({r['weights']['source']})")
    console.print(
        f"DiT {p['dit']:,} params, predictor {p['predictor']:,} params ({100 * p['predictor_to_dit']:.2f}% of the DiT)"
    )
    io = Table("graph", "precision (opset)", "inputs", "outputs", title="graphs")
    for name, g in r["graphs"].items():
        fmt = lambda ts: "\n".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in ts)  # noqa: E731
        io.add_row(
            name,
            ", ".join(f"{k} ({v['opset']})" for k, v in g["variants"].items()),
            fmt(g["inputs"]),
            fmt(g["outputs"]),
        )
    console.print(io)
    rng = Table("dim", "min", "opt", "max", title="validated shape ranges")
    for dim, (lo, opt, hi) in r["ranges"].items():
        rng.add_row(dim, str(lo), str(opt), str(hi))
    console.print(rng)
    s = r["schedule"]
    console.print(f"default schedule: {s['steps']} steps, shift {s['shift']}, anchors {s['anchors']}")
    if r["engines"]:
        engines = Table("engine", "file", "TensorRT", "GPU (compute capability)", "shapes", title="TensorRT engines")
        for k, e in r["engines"].items():
            gpu = f"{e['gpu']} ({e['compute_capability']})"
            engines.add_row(k, e["file"], e["tensorrt"], gpu, "static" if e["static"] else "dynamic")
        console.print(engines)
    files = Table("file", "bytes", "sha256", title="files")
    for f, e in r["files"].items():
        files.add_row(f, f"{e['bytes']:,}", "[green]OK[/green]" if e["sha256_ok"] else "[red]MISMATCH[/red]")
    console.print(files)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
