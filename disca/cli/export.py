"""`disca-export`: turn a model into a deployable bundle, and look inside bundles.

torch is imported only by the commands that need it: `inspect` runs on a deploy machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from disca._atomic import check_writable
from disca.bundle import Bundle, refuse_non_bundle, resolve_bundle
from disca.cli._common import FiniteFloat, clean_errors, parse_range
from disca.manifest import MAX_STEPS
from disca.spec import DIMS, ShapeRanges

PRESET_NAMES = ("tiny", "demo")  # kept in step with disca.models.config.PRESETS (tested)
PRECISIONS = ("fp32", "fp16", "fp8")  # kept in step with disca.exporter.precision.PRECISIONS (tested)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disca")
def main():
    """Export DisCa models to bundles of two ONNX graphs, and inspect bundles.

    A BUNDLE argument is a bundle directory, or `demo` for the demo model shipped with disca
    (a directory named `demo` in the current directory takes precedence). The shipped demo is
    read-only: the commands that write into a bundle need a copy of it.
    """


@main.command("onnx")
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


def default_graphs(manifest: dict) -> list[str]:
    """The engines DisCa runs on this bundle: the head too where some gaps reuse the cache or run TaylorSeer."""
    record = manifest.get("cached_steps") or {}
    head = record.get("reuse_gaps") or record.get("taylor_gaps")
    return ["full", "predictor", "head"] if head else ["full", "predictor"]


@main.command("build")
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

    b = _open_to_change(bundle)
    names = default_graphs(b.manifest) if graphs is None else graphs.split(",")
    names = [g.strip() for g in names if g.strip()]
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


def _open_to_change(path) -> Bundle:
    """Open a bundle that a command will rewrite (not the shipped demo): checked writable before any work."""
    b = Bundle.open(resolve_bundle(path, write=True))
    check_writable(b.path, "bundle", directory=True)
    return b


def samples_option(default: int, help: str):
    """--samples of the commands that sample a calibration set: at least one."""
    return click.option("--samples", default=default, show_default=True, type=click.IntRange(1), help=help)


def _calibration_set(bundle, prompts, samples, seed=0):
    from disca.calibration.dataset import calibration_set, read_prompts

    return calibration_set(bundle, read_prompts(prompts) if prompts else None, n=samples, seed=seed)


@main.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompts", type=click.Path(path_type=Path), help="Calibration prompts, one per line.")
@samples_option(16, "Sampling runs (prompt x seed) to record.")
@click.option(
    "--min-cosine",
    default=0.9995,
    show_default=True,
    type=FiniteFloat(0, 1),
    help="A layer whose solo FP8 quantization gives a lower output cosine stays FP16.",
)
@click.option("--keep-fp16", default="", help="Layers (module paths or node names) to keep FP16, comma-separated.")
@click.option("--force-fp8", default="", help="Layers to quantize whatever their sensitivity, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def calibrate_cmd(bundle, prompts, samples, min_cosine, keep_fp16, force_fp8, as_json):
    """FP8 variants of BUNDLE's graphs calibrated on real sampling trajectories of its own model.

    Records both graphs' inputs over all-full and DisCa runs, takes "max" ranges, quantizes
    one layer at a time to find the sensitive ones (kept FP16), writes full.fp8.onnx and
    predictor.fp8.onnx into the bundle, and checks FP8 DisCa against FP32 DisCa end to end.
    """
    from disca.calibration.dataset import sample_all, uses_task_vocabulary
    from disca.calibration.fp8 import calibrate_fp8
    from disca.metrics import psnr
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
    from disca.runtime.schedule import calibrated_reuse_gaps, calibrated_taylor_gaps

    b = _open_to_change(bundle)
    cal = _calibration_set(b, prompts, samples)
    console = Console(stderr=True)
    split = lambda text: {x.strip() for x in text.split(",") if x.strip()}  # noqa: E731
    report = calibrate_fp8(
        bundle, cal, min_cosine=min_cosine, keep_fp16=split(keep_fp16), force_fp8=split(force_fp8), log=console.print
    )
    b = Bundle.open(bundle)
    sched, outs = b.schedule, {}
    gaps = calibrated_reuse_gaps(b.manifest, sched.steps, sched.shift)  # DisCa as it runs
    taylor = calibrated_taylor_gaps(b.manifest, sched.steps, sched.shift)
    for p in ("fp32", "fp8"):
        with OnnxRuntimeBackend(b, precision=p) as backend:
            outs[p] = sample_all(
                backend,
                cal,
                steps=sched.steps,
                shift=sched.shift,
                anchors=sched.anchors,
                reuse_gaps=gaps,
                taylor_gaps=taylor,
            )
    e2e = {"samples": len(cal), "psnr_db_fp8_vs_fp32": round(psnr(outs["fp8"], outs["fp32"]), 3)}
    if uses_task_vocabulary(b):
        from disca.task import score

        for p, out in outs.items():
            e2e[f"adherence_{p}"] = round(score(np.clip(out, -1, 1), cal.prompts)["all"], 4)
    result = {
        "layers": [x.__dict__ for x in report.layers],
        "kept_fp16": [x.module for x in report.kept_fp16()],
        "recorded_inputs": report.recorded,
        "end_to_end": e2e,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table("graph", "layer", "amax", "cosine", "PSNR (dB)", "precision", title="FP8 sensitivity (one layer)")
    for x in report.layers:
        table.add_row(
            x.graph,
            x.module,
            f"{x.amax:.3g}",
            f"{x.cosine:.6f}",
            f"{x.psnr_db:.1f}",
            "fp8" if x.fp8 else "[yellow]fp16[/yellow]",
        )
    Console().print(table)
    kept = len(report.kept_fp16())
    click.echo(f"{len(report.layers) - kept} layers in FP8, {kept} kept FP16 (min cosine {min_cosine})")
    click.echo("end to end (DisCa, ONNX Runtime CPU): " + ", ".join(f"{k} {v}" for k, v in e2e.items()))


@main.command("teacache")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompts", type=click.Path(path_type=Path), help="Prompts, one per line.")
@samples_option(16, "All-full sampling runs (prompt x seed) to fit on.")
@click.option("--degree", default=4, show_default=True, type=click.IntRange(1, 8), help="Polynomial degree.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def teacache_cmd(bundle, prompts, samples, degree, as_json):
    """Fit TeaCache's rescaling polynomial on BUNDLE's own all-full sampling runs (ONNX Runtime CPU) and store it
    in the manifest (`disca-export onnx` fits one on 4 runs; this refits on a prompt set)."""
    from disca.calibration.teacache import calibrate_teacache
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

    b = _open_to_change(bundle)
    if "first" not in b.manifest["graphs"]:
        raise click.UsageError(f"bundle {bundle} has no probe graph (`first`): re-export it with this disca version")
    cal = _calibration_set(b, prompts, samples)
    with OnnxRuntimeBackend(b) as backend:
        record = calibrate_teacache(b, backend, cal, degree=degree)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(
            f"teacache: degree-{degree} polynomial fitted on {record['points']} step pairs of {len(cal)} runs "
            f"(mean abs error {record['mean_abs_error']:.4f}, mean change {record['mean_output']:.4f}); "
            f"written to {b.path / 'manifest.json'}"
        )


@main.command("schedule")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), help="Sampling steps (default: the bundle's schedule).")
@click.option(
    "--anchors", "k", type=click.IntRange(1), help="Also make the searched list of K anchors the default schedule."
)
@click.option("--prompts", type=click.Path(path_type=Path), help="Calibration prompts, one per line.")
@samples_option(8, "Prompt x seed samples per evaluated run.")
@click.option(
    "--predictor-only",
    is_flag=True,
    help="Run the predictor on every cached step (the paper's DisCa): skip the per-gap reuse calibration.",
)
@click.option(
    "--gaps-only",
    is_flag=True,
    help="Only the per-gap calibration (predictor, reuse or TaylorSeer-1); keep the stored anchor lists.",
)
@click.option("--report", "report_dir", default="schedule-report", show_default=True, type=click.Path(path_type=Path))
@click.option("--no-write", is_flag=True, help="Report only: leave the bundle's manifest as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def schedule_cmd(bundle, steps, k, prompts, samples, predictor_only, gaps_only, report_dir, no_write, as_json):
    """Calibrate what each cached step runs, then search, for every budget K, the K anchor steps whose
    DisCa runs come closest to all-full sampling.

    First, gap by gap (steps since the last anchor), whether the predictor or the plain cache through
    the head comes closer to the full DiT's velocity on the calibration runs; DisCa reuses the cache
    where it does (`cached_steps` in the manifest). Then greedy forward selection over real DisCa runs
    (step 0 always an anchor). Stores the searched list of every K in the manifest (`anchor_lists`:
    what `disca-run --anchors K` and `disca-bench` use), with --anchors K also as the default schedule,
    and writes the quality-vs-anchors curve as a table, JSON and PNG plot, compared with the official
    and uniform lists.
    """
    from disca.calibration import gaps
    from disca.calibration.dataset import uses_task_vocabulary
    from disca.calibration.schedule_search import compare, greedy_curve, markdown_table, plot_curve
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

    b = Bundle.open(bundle) if no_write else _open_to_change(bundle)
    check_writable(report_dir, "report directory", directory=True)  # before the search, not after it
    steps = b.schedule.steps if steps is None else steps
    shift = b.schedule.shift
    if k is not None and not 1 <= k <= steps:
        raise click.BadParameter(f"--anchors must be between 1 and --steps ({steps})", param_hint="--anchors")
    if not predictor_only and "head" not in b.manifest["graphs"]:
        raise click.UsageError(
            f"bundle {b.path} has no head graph, which the predictor-or-reuse choice needs: re-export it with "
            "this disca version, or pass --predictor-only"
        )
    cal = _calibration_set(b, prompts, samples)
    console = Console(stderr=True)
    no_plot = "" if _importable("matplotlib") else " (no PNG: matplotlib is not installed, pip install 'disca[plot]')"
    if no_plot:
        console.print(f"the report will be written{no_plot}", markup=False)
    adherence = None
    if uses_task_vocabulary(b):
        from disca.task import score

        adherence = lambda out: round(score(np.clip(out, -1, 1), cal.prompts)["all"], 4)  # noqa: E731
    cached_steps = None
    with OnnxRuntimeBackend(b) as backend:
        if not predictor_only:
            console.print(f"predictor vs reuse, gap by gap, on {len(cal)} all-full runs...")
            errors = gaps.gap_errors(backend, cal, steps=steps, shift=shift)
            cached_steps = gaps.cached_steps_record(errors, steps=steps, shift=shift, samples=len(cal))
            console.print(f"  reuse the cache at gaps {cached_steps['reuse_gaps'] or 'none'}")
            console.print(f"  TaylorSeer-1 through the head at gaps {cached_steps['taylor_gaps'] or 'none'}")
            if gaps_only:
                if not no_write:
                    from disca.engines import write_manifest

                    b.manifest["cached_steps"] = cached_steps
                    write_manifest(b)
                click.echo(json.dumps(cached_steps, indent=2) if as_json else gaps.markdown_table(errors))
                return
        reuse_gaps = cached_steps["reuse_gaps"] if cached_steps else []
        taylor_gaps = cached_steps["taylor_gaps"] if cached_steps else []
        console.print(f"greedy search over {steps} steps, {len(cal)} samples per run...")
        ref, curve = greedy_curve(
            backend, cal, steps=steps, shift=shift, reuse_gaps=reuse_gaps, log=console.print, taylor_gaps=taylor_gaps
        )
        ks = sorted({*([k] if k else []), *(x for x in (6, 8, 10) if x < steps)})
        rows = compare(
            backend,
            cal,
            ref,
            curve,
            steps=steps,
            shift=shift,
            ks=ks,
            reuse_gaps=reuse_gaps,
            adherence=adherence,
            taylor_gaps=taylor_gaps,
        )
    chosen = curve[k - 1].anchors if k else None
    report_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "steps": steps,
        "anchors": k,
        "chosen": chosen,
        "cached_steps": cached_steps,
        "curve": [p.to_dict() for p in curve],
        "compare": rows,
    }
    table = markdown_table(curve, rows)
    if cached_steps:
        table = gaps.markdown_table(cached_steps["errors"]) + "\n\n" + table
    (report_dir / "schedule_search.json").write_text(json.dumps(result, indent=2))
    (report_dir / "schedule_search.md").write_text(table + "\n")
    if not no_plot:
        plot_curve(curve, rows, report_dir / "schedule_search.png", f"{b.path.name}: DisCa anchors vs quality")
    if not no_write:
        from disca.engines import write_manifest

        b.manifest.pop("cached_steps", None)  # --predictor-only: the predictor on every cached step
        if cached_steps:
            b.manifest["cached_steps"] = cached_steps
        b.manifest["anchor_lists"] = {
            "steps": steps,
            "shift": shift,
            "samples": len(cal),
            "reuse_gaps": reuse_gaps,  # the lists were searched with these fallbacks
            "taylor_gaps": taylor_gaps,
            "lists": {str(p["k"]): p["anchors"] for p in result["curve"]},
            "psnr_db": {str(p["k"]): p["psnr_db"] for p in result["curve"]},
        }
        if chosen:
            b.manifest["schedule"] = {"steps": steps, "shift": shift, "anchors": chosen, "searched": True}
        write_manifest(b)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(table)
        if no_write:
            where = "left the manifest as it was"
        else:
            where = f"stored the searched lists (K = 1..{steps}) in {b.path}"
            where += f", anchors {chosen} as its default schedule" if chosen else ""
        click.echo(f"{where}; report in {report_dir}/{no_plot}")


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@main.command("validate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", "backends", default="onnxruntime", show_default=True, help="Backends, comma-separated.")
@click.option("--prompts", type=click.Path(path_type=Path), help="Prompts for the end-to-end check, one per line.")
@samples_option(8, "Prompt x seed samples of the end-to-end check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def validate_cmd(bundle, backends, prompts, samples, as_json):
    """Check BUNDLE before deploying it: every graph variant on every backend against the fp32
    reference (two shapes), and DisCa end to end against all-full sampling, with the thresholds
    stored in the manifest. Exits non-zero when anything fails.

    \b
    Examples:
      disca-export validate demo
      disca-export validate bundles/student --backend onnxruntime,torch --json   # needs a bundle with weights
    """
    from disca.calibration.validation import validate_bundle

    b = Bundle.open(bundle)
    names = [x.strip() for x in backends.split(",") if x.strip()]
    cal = _calibration_set(b, prompts, samples)
    report = validate_bundle(bundle, cal, names, log=Console(stderr=True).print)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        table = Table(
            "backend",
            "precision",
            "output",
            "shape",
            "rel L2",
            "cosine",
            "ok",
            title=f"parity vs {report['reference']}",
        )
        for p in report["parity"]:
            if "skipped" in p:
                table.add_row(p["backend"], p["precision"], "skipped", p["skipped"], "", "", "")
                continue
            shape = "x".join(str(v) for v in p["shape"])
            table.add_row(
                p["backend"],
                p["precision"],
                f"{p['graph']}.{p['output']}",
                shape,
                f"{p['rel_l2']:.2e}",
                f"{p['cosine']:.6f}",
                "ok" if p["ok"] else "[red]FAIL[/red]",
            )
        Console().print(table)
        for e in report["end_to_end"]:
            adh = f", adherence {e['adherence']} (all-full fp32 {e['adherence_full_fp32']})" if "adherence" in e else ""
            verdict = "ok" if e["ok"] else "FAIL"
            click.echo(
                f"end to end {e['backend']} {e['precision']}: DisCa vs all-full {e['psnr_db']} dB{adh}: {verdict}"
            )
    if not report["ok"]:
        raise click.ClickException(f"bundle {bundle} failed validation (thresholds: {report['thresholds']})")


@main.command("inspect")
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


@main.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model repository directory to write.")
@click.option(
    "--backend", type=click.Choice(["onnxruntime", "tensorrt", "torch"]), default="onnxruntime", show_default=True
)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Graph variant (onnxruntime) or engine precision.")
@click.option("--providers", help="onnxruntime providers (default: cuda,cpu with --kind gpu, else cpu).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True, help="Instance kind.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1), help="Instances per GPU (or node).")
@click.option("--gpus", help="GPU ids for the instance group, comma-separated (default: every GPU).")
@click.option("--max-batch", type=click.IntRange(1), help="Requests per Triton batch (default: the bundle's max).")
@click.option("--max-queue-delay-ms", default=2.0, show_default=True, type=click.FloatRange(0))
@click.option("--bundle-path", "reference", help="Reference the bundle at this absolute path on the server; no copy.")
@click.option("--overwrite", is_flag=True, help="Replace an existing repository at --out.")
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

    providers = providers or ("cuda,cpu" if kind == "gpu" else "cpu")
    device = "cuda" if kind == "gpu" else "cpu"
    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise click.BadParameter(f"expected GPU ids like 0,1, got {gpus!r}", param_hint="--gpus") from None
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
