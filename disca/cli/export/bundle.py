"""`disca-export onnx` (a model -> a bundle) and `disca-export inspect` (what is in a bundle).

torch is imported only by `onnx`: `inspect` runs on a deploy machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from disca.bundle import Bundle, refuse_non_bundle
from disca.cli._common import clean_errors, parse_range
from disca.cli._common import given as option_given
from disca.cli.export._common import PRECISIONS, PRESET_NAMES
from disca.spec import DIMS, ShapeRanges


@click.command("onnx")
@click.option(
    "--preset", type=click.Choice(PRESET_NAMES), help="Export an untrained model of this preset (random weights)."
)
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Export a trained checkpoint directory.")
@click.option(
    "--from",
    "source",
    help="diffusers:PATH - a local diffusers Wan2.1 / HunyuanVideo transformer directory (fresh predictor).",
)
@click.option(
    "--predictor",
    "predictor_dir",
    type=click.Path(path_type=Path),
    help="With --from: a predictor trained on that model (`disca-train predictor --from ...`).",
)
@click.option(
    "--predictor-depth",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="With --from: blocks of a fresh predictor.",
)
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
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the random weights with --preset."
)
@click.option("--no-weights", is_flag=True, help="Leave the PyTorch weights out (no torch backend for this bundle).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--verbose", is_flag=True, help="Show the exporter's own output.")
@clean_errors
def onnx_cmd(
    preset,
    checkpoint,
    source,
    predictor_dir,
    predictor_depth,
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
      disca-export onnx --preset demo --out bundles/untrained                  # needs torch, a minute or two
      disca-export onnx --checkpoint runs/student --out bundles/student --precision fp32,fp16,fp8   # needs a checkpoint
      disca-export onnx --checkpoint runs/student --out bundles/student --frames 4:16 --opset 20   # needs a checkpoint
      disca-export onnx --from diffusers:wan/transformer --predictor runs/wan-predictor --out bundles/wan  # needs Wan
    """
    if sum(x is not None for x in (preset, checkpoint, source)) != 1:
        raise click.UsageError("give exactly one of --preset NAME, --checkpoint DIR or --from diffusers:PATH")
    if predictor_dir is not None and source is None:
        raise click.UsageError("--predictor goes with --from diffusers:PATH (a --checkpoint carries its predictor)")
    # options the chosen source does not read: refused, not silently dropped
    if option_given("seed") and preset is None:
        raise click.UsageError("--seed draws a preset's random weights: a --checkpoint or --from has its own")
    if option_given("predictor_depth") and (checkpoint is not None or predictor_dir is not None):
        raise click.UsageError("--predictor-depth sizes a fresh predictor: the trained one given has its own depth")
    if no_weights and source is not None:
        raise click.UsageError("--no-weights is the default with --from (the host's weights stay in its directory)")
    if out.exists() and not overwrite:
        raise click.ClickException(f"{out} already exists: choose another --out or pass --overwrite")
    refuse_non_bundle(out)  # --overwrite replaces a bundle, never a directory of something else
    precisions = ["fp32", *(p.strip().lower() for p in precision.split(",") if p.strip() not in ("", "fp32"))]
    for p in precisions:
        if p not in PRECISIONS:
            choices = ", ".join(PRECISIONS)
            raise click.BadParameter(f"{p!r} is not a precision; choose from {choices}", param_hint="--precision")

    from disca.build import build_bundle
    from disca.models import build, load_checkpoint, randomize_
    from disca.models import preset as get_preset

    if source is not None:
        kind, _, path = source.partition(":")
        if kind != "diffusers" or not path:
            raise click.BadParameter(f"expected diffusers:PATH, got {source!r}", param_hint="--from")
        from disca.models.adapters import load_diffusers

        dit, predictor = load_diffusers(path, predictor_depth=predictor_depth)
        note = f"diffusers:{path} ({type(dit.model).__name__}), untrained predictor"
        if predictor_dir is not None:
            from disca.models.adapters.predictor_checkpoint import load_predictor_checkpoint

            predictor = load_predictor_checkpoint(predictor_dir, dit)
            note = f"diffusers:{path} ({type(dit.model).__name__}), predictor {predictor_dir}"
        cfg, text, no_weights = dit.model_config(predictor_depth=len(predictor.blocks)), None, True
    elif checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, require_predictor=False)
        cfg, dit, predictor, text = ckpt.cfg, ckpt.dit, ckpt.predictor, ckpt.text
        note = f"checkpoint {checkpoint}"
        if predictor is None:  # a teacher or a student without its predictor: all-full sampling only
            predictor = build(cfg)[1]
            note += " (no trained predictor: run it with --schedule full)"
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
    build_bundle(
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


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def inspect_cmd(bundle, as_json):
    """Show a bundle's graphs, I/O, shape ranges, parameter counts and schedule, and verify its files' hashes.

    Exits non-zero if a file does not match its sha256.

    \b
    Examples:
      disca-export inspect demo
      disca-export inspect demo --json
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
