"""`disca-export calibrate`, `teacache` and `schedule`: sample the bundle's own model on a calibration set
(ONNX Runtime, no torch) and store what they find in the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from disca._atomic import check_writable, write_together
from disca.bundle import Bundle
from disca.cli._common import FiniteFloat, clean_errors, given
from disca.cli.export._common import calibration_samples, importable, open_to_change, samples_option
from disca.manifest import MAX_STEPS


@click.command("calibrate")
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
    from disca.calibration.dataset import sample_disca, uses_task_vocabulary
    from disca.calibration.fp8 import calibrate_fp8
    from disca.metrics import psnr
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

    b = open_to_change(bundle)
    cal = calibration_samples(b, prompts, samples)
    console = Console(stderr=True)
    split = lambda text: {x.strip() for x in text.split(",") if x.strip()}  # noqa: E731
    report = calibrate_fp8(
        bundle, cal, min_cosine=min_cosine, keep_fp16=split(keep_fp16), force_fp8=split(force_fp8), log=console.print
    )
    b = Bundle.open(bundle)
    outs = {}
    for p in ("fp32", "fp8"):
        with OnnxRuntimeBackend(b, precision=p) as backend:
            outs[p] = sample_disca(backend, cal, b.manifest, b.schedule)  # DisCa as it runs
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


@click.command("teacache")
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

    b = open_to_change(bundle)
    if "first" not in b.manifest["graphs"]:
        raise click.UsageError(f"bundle {bundle} has no probe graph (`first`): re-export it with this disca version")
    cal = calibration_samples(b, prompts, samples)
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


def _choose_on_runs(backend, cal, ref, errors, lists, *, steps, shift, log) -> dict:
    """The `cached_steps` record with the per-gap choice made on DisCa runs over `lists` (`gaps.choose_on_runs`),
    for DisCa and for its training-free control (TaylorSeer-1 or reuse)."""
    from disca.calibration import gaps
    from disca.calibration.dataset import sample_all
    from disca.metrics import psnr

    def quality(anchors, reuse_gaps, taylor_gaps):
        kw = dict(steps=steps, shift=shift, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps)
        return psnr(sample_all(backend, cal, anchors=anchors, **kw), ref)

    log(f"the same choice on DisCa runs over {len(lists)} searched lists...")
    choice, trials = gaps.choose_on_runs(quality, errors, lists, steps=steps, log=log)
    log("the training-free control's choice (TaylorSeer-1 or reuse), the same way...")
    control = gaps.choose_on_runs(quality, errors, lists, steps=steps, options=("reuse", "taylor"), log=log)
    log(f"  reuse the cache at gaps {gaps.gaps_of(choice, 'reuse') or 'none'}")
    log(f"  TaylorSeer-1 through the head at gaps {gaps.gaps_of(choice, 'taylor') or 'none'}")
    record = dict(steps=steps, shift=shift, samples=len(cal), choice=choice, trials=trials, control=control)
    return gaps.cached_steps_record(errors, **record)


def _take_lists(b: Bundle, other: Bundle, steps: int) -> None:
    """Copy `other`'s searched anchor lists and default schedule into `b` (in memory; written with the rest)."""
    record = other.manifest.get("anchor_lists") or {}
    if record.get("steps") != steps or record.get("shift") not in (None, b.schedule.shift):
        raise click.UsageError(
            f"--lists-from {other.path} has no anchor lists searched for {steps} steps at shift {b.schedule.shift}"
        )
    if other.manifest["model"]["dit"] != b.manifest["model"]["dit"]:
        raise click.UsageError(f"--lists-from {other.path} holds another DiT than {b.path}: its lists do not apply")
    b.manifest["anchor_lists"] = record
    if other.schedule.steps == steps and other.schedule.shift == b.schedule.shift:
        b.manifest["schedule"] = other.manifest["schedule"]


@click.command("schedule")
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
@click.option(
    "--on-runs",
    is_flag=True,
    help="Then redo the per-gap choice on DisCa runs over the searched lists (with --gaps-only: the bundle's "
    "stored lists); wants many samples (64: on 16 it did not carry over to other clips).",
)
@click.option(
    "--lists-from",
    type=click.Path(path_type=Path),
    help="With --gaps-only: first take the anchor lists (and default schedule) searched for this other bundle of "
    "the same DiT, e.g. the one a predictor was fine-tuned on (disca-train predictor --lists).",
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(0, 50),
    help="Local-search rounds per budget (K = 3..14 and --anchors) after the greedy pass (0: the greedy lists only).",
)
@click.option("--report", "report_dir", default="schedule-report", show_default=True, type=click.Path(path_type=Path))
@click.option("--no-write", is_flag=True, help="Report only: leave the bundle's manifest as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def schedule_cmd(
    bundle,
    steps,
    k,
    prompts,
    samples,
    predictor_only,
    gaps_only,
    on_runs,
    lists_from,
    rounds,
    report_dir,
    no_write,
    as_json,
):
    """Calibrate what each cached step runs, then search, for every budget K, the K anchor steps whose
    DisCa runs come closest to all-full sampling.

    First, gap by gap (steps since the last anchor), which of the predictor, the plain cache through the
    head (reuse) and TaylorSeer-1's forecast through the head comes closer to the full DiT's velocity on
    the calibration runs (`cached_steps` in the manifest).
    Then greedy forward selection over real DisCa runs (step 0 always an anchor), then, for the
    benchmark's budgets, a local search from the best of the greedy, even and warm-up lists (`--rounds`).
    Stores the searched list of every K in the manifest (`anchor_lists`: what `disca-run --anchors K` and
    `disca-bench` use), with --anchors K also as the default schedule, and writes the quality-vs-anchors
    curve as a table, JSON and PNG plot, compared with the official and uniform lists. With --on-runs, the
    per-gap choice is then redone on DisCa runs over the searched lists (the lists stay as searched).
    """
    from disca.benchmark import BENCH_BUDGETS
    from disca.calibration import gaps
    from disca.calibration.dataset import sample_all, uses_task_vocabulary
    from disca.calibration.schedule_search import (
        compare,
        disca_quality,
        greedy_curve,
        markdown_table,
        plot_curve,
        refine,
    )
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

    if predictor_only and (gaps_only or on_runs):  # the per-gap choice is what --predictor-only leaves out
        flag = "--gaps-only" if gaps_only else "--on-runs"
        raise click.UsageError(f"{flag} redoes the per-gap choice, which --predictor-only skips: give one of them")
    if gaps_only and (k is not None or given("rounds")):
        raise click.UsageError("--gaps-only keeps the stored anchor lists: drop --anchors / --rounds")
    if lists_from is not None and not gaps_only:
        raise click.UsageError("--lists-from replaces the search: it goes with --gaps-only")
    b = Bundle.open(bundle) if no_write else open_to_change(bundle)
    check_writable(report_dir, "report directory", directory=True)  # before the search, not after it
    steps = b.schedule.steps if steps is None else steps
    if lists_from is not None:
        _take_lists(b, Bundle.open(lists_from), steps)
    shift = b.schedule.shift
    if k is not None and not 1 <= k <= steps:
        raise click.BadParameter(f"--anchors must be between 1 and --steps ({steps})", param_hint="--anchors")
    if not predictor_only and "head" not in b.manifest["graphs"]:
        raise click.UsageError(
            f"bundle {b.path} has no head graph, which the predictor-or-reuse choice needs: re-export it with "
            "this disca version, or pass --predictor-only"
        )
    cal = calibration_samples(b, prompts, samples)
    console = Console(stderr=True)
    no_plot = "" if importable("matplotlib") else " (no PNG: matplotlib is not installed, pip install 'disca[plot]')"
    if no_plot:
        console.print(f"the report will be written{no_plot}", markup=False)
    adherence = None
    if uses_task_vocabulary(b):
        from disca.task import score

        adherence = lambda out: round(score(np.clip(out, -1, 1), cal.prompts)["all"], 4)  # noqa: E731
    cached_steps = None
    # every budget the bench spans (3..14 of 20), not only its own: `disca-run --anchors K` gets a refined list
    budgets = sorted({*range(min(BENCH_BUDGETS), max(BENCH_BUDGETS) + 1), *([k] if k else [])})
    with OnnxRuntimeBackend(b) as backend:
        if not predictor_only:
            console.print(f"predictor vs reuse vs TaylorSeer-1, gap by gap, on {len(cal)} all-full runs...")
            errors = gaps.gap_errors(backend, cal, steps=steps, shift=shift)
            cached_steps = gaps.cached_steps_record(errors, steps=steps, shift=shift, samples=len(cal))
            console.print(f"  reuse the cache at gaps {cached_steps['reuse_gaps'] or 'none'}")
            console.print(f"  TaylorSeer-1 through the head at gaps {cached_steps['taylor_gaps'] or 'none'}")
            if gaps_only:
                if on_runs:
                    stored = b.manifest.get("anchor_lists") or {}
                    lists = [
                        stored["lists"][str(x)] for x in budgets if 2 <= x < steps and str(x) in stored.get("lists", {})
                    ]
                    if stored.get("steps") != steps or not lists:
                        raise click.UsageError(
                            f"--on-runs with --gaps-only needs the bundle's searched lists for {steps} steps: run "
                            "`disca-export schedule` without --gaps-only"
                        )
                    ref = sample_all(backend, cal, steps=steps, shift=shift)
                    cached_steps = _choose_on_runs(
                        backend, cal, ref, errors, lists, steps=steps, shift=shift, log=console.print
                    )
                if not no_write:
                    from disca.engines import write_manifest

                    b.manifest["cached_steps"] = cached_steps
                    write_manifest(b)
                click.echo(json.dumps(cached_steps, indent=2) if as_json else gaps.markdown_table(errors, cached_steps))
                return
        reuse_gaps = cached_steps["reuse_gaps"] if cached_steps else []
        taylor_gaps = cached_steps["taylor_gaps"] if cached_steps else []
        console.print(f"greedy search over {steps} steps, {len(cal)} samples per run...")
        ref, curve = greedy_curve(
            backend, cal, steps=steps, shift=shift, reuse_gaps=reuse_gaps, log=console.print, taylor_gaps=taylor_gaps
        )
        if rounds:
            console.print(f"local search around the best lists, {rounds} rounds per budget...")
            quality = disca_quality(
                backend, cal, ref, steps=steps, shift=shift, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps
            )
            curve = refine(quality, curve, steps=steps, ks=budgets, rounds=rounds, log=console.print)
        if on_runs and cached_steps:
            lists = [curve[x - 1].anchors for x in budgets if 2 <= x < steps]
            cached_steps = _choose_on_runs(
                backend, cal, ref, errors, lists, steps=steps, shift=shift, log=console.print
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
            reuse_gaps=cached_steps["reuse_gaps"] if cached_steps else [],
            adherence=adherence,
            taylor_gaps=cached_steps["taylor_gaps"] if cached_steps else [],
        )
    chosen = curve[k - 1].anchors if k else None
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
        table = gaps.markdown_table(cached_steps["errors"], cached_steps) + "\n\n" + table
    files = {
        "schedule_search.json": lambda p: p.write_text(json.dumps(result, indent=2)),
        "schedule_search.md": lambda p: p.write_text(table + "\n"),
    }
    if not no_plot:
        title = f"{b.path.name}: DisCa anchors vs quality"
        files["schedule_search.png"] = lambda p: plot_curve(curve, rows, p, title)
    write_together(report_dir, files)
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
