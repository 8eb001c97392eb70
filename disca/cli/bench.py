"""`disca-bench`: DisCa against the training-free caches, quality vs speed, side by side."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console

from disca._atomic import write_together
from disca.benchmark import BENCH_BUDGETS, DEFAULT_POLICIES, LIST_KINDS
from disca.cli._common import FiniteFloat, clean_errors, given
from disca.cli.export._common import MAX_SAMPLES
from disca.manifest import MAX_STEPS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--policies", default=",".join(DEFAULT_POLICIES), show_default=True)
@click.option(
    "--anchors", "budgets", default=",".join(map(str, BENCH_BUDGETS)), show_default=True, help="Anchor budgets K."
)
@click.option(
    "--lists",
    default="searched",
    show_default=True,
    help="Anchor lists the anchor policies run at each budget: searched (the bundle's), even, warm-up.",
)
@click.option("--adaptive", "adaptive_thresholds", help="disca-adaptive thresholds (default 0.1,0.15,0.2,0.3).")
@click.option("--teacache", "teacache_thresholds", help="TeaCache thresholds (default 0.2,0.5,1,2).")
@click.option("--first-block", "first_block_thresholds", help="First-Block-Cache thresholds (default 0.2,0.3,0.5,0.8).")
@click.option(
    "--dbcache",
    "dbcache_settings",
    help="DBCache settings THRESHOLD/CAP (CAP: most cached steps in a row, 0 for none), e.g. 0.2/2,1e9/3.",
)
@click.option(
    "--samples", default=16, show_default=True, type=click.IntRange(1, MAX_SAMPLES), help="Prompt x seed clips per run."
)
@click.option("--prompts", type=click.Path(path_type=Path), help="Prompts, one per line (task bundles have a set).")
@click.option("--teacher", "teacher_bundle", type=click.Path(path_type=Path), help="Teacher bundle: CFG reference.")
@click.option("--teacher-steps", default=50, show_default=True, type=click.IntRange(1, MAX_STEPS))
@click.option("--guidance", default=4.0, show_default=True, type=FiniteFloat(min=0))
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option(
    "--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads (the per-token graphs run on one)."
)
@click.option("--out", "out_dir", default="bench-report", show_default=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@clean_errors
def main(
    bundle,
    policies,
    budgets,
    lists,
    adaptive_thresholds,
    teacache_thresholds,
    first_block_thresholds,
    dbcache_settings,
    samples,
    prompts,
    teacher_bundle,
    teacher_steps,
    guidance,
    backend,
    threads,
    out_dir,
    as_json,
):
    """Run every policy at several anchor budgets on BUNDLE (a bundle directory, or `demo`, the default:
    the demo model shipped with disca) and write bench.md, bench.json and bench.png (quality vs
    measured speedup, one curve per policy).

    \b
    Examples:
      disca-bench --samples 2 --anchors 8 --policies disca,reuse --out bench-quick
      disca-bench --samples 16                                        # needs minutes on CPU
      disca-bench bundles/student --anchors 10,8,6 --prompts prompts.txt --teacher bundles/teacher  # needs bundles
    """
    from disca._atomic import check_writable
    from disca.benchmark import BENCH_SEED, markdown, plot, report_json, run_benchmark
    from disca.bundle import Bundle
    from disca.calibration.dataset import calibration_set, read_prompts
    from disca.runtime import demo_bundle
    from disca.runtime.schedule import POLICIES

    bundle = bundle or demo_bundle()
    check_writable(out_dir, "report directory", directory=True)  # before the runs, not after them
    names = [p.strip() for p in policies.split(",") if p.strip()]
    choices = [p for p in POLICIES if p != "full"]  # all-full is the reference every run is measured against
    for name in names:  # a clear error for an unknown name, before any run
        if name not in choices:
            raise click.BadParameter(
                f"unknown policy {name!r}; choose from {', '.join(choices)}", param_hint="--policies"
            )
    if not names or len(set(names)) != len(names):
        raise click.BadParameter(
            f"expected distinct policy names, comma-separated, got {policies!r}", param_hint="--policies"
        )
    for option, policy in (("adaptive", "disca-adaptive"), ("teacache", "teacache"), ("first_block", "first-block")):
        if given(f"{option}_thresholds") and policy not in names:
            raise click.UsageError(
                f"--{option.replace('_', '-')} sets {policy}'s thresholds, which --policies does not run"
            )
    if given("dbcache_settings") and not any(n.startswith("dbcache") for n in names):
        raise click.UsageError("--dbcache sets the DBCache policies' settings, which --policies does not run")
    if given("threads") and backend != "onnxruntime":
        raise click.UsageError(f"--threads is for --backend onnxruntime, not {backend}: drop it")
    ks = _numbers(budgets, int, "--anchors")
    if len(set(ks)) != len(ks):
        raise click.BadParameter(f"expected distinct anchor budgets, got {budgets!r}", param_hint="--anchors")
    kinds = [x.strip() for x in lists.split(",") if x.strip()]
    if not kinds or any(kind not in LIST_KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        raise click.BadParameter(f"choose from {', '.join(LIST_KINDS)}, got {lists!r}", param_hint="--lists")
    thresholds = {
        name: _numbers(text, float, option)
        for name, text, option in (
            ("disca-adaptive", adaptive_thresholds, "--adaptive"),
            ("teacache", teacache_thresholds, "--teacache"),
            ("first-block", first_block_thresholds, "--first-block"),
        )
        if text
    }
    dbcache = _dbcache(dbcache_settings) if dbcache_settings else None
    b = Bundle.open(bundle)
    cal = calibration_set(b, read_prompts(prompts) if prompts else None, n=samples, seed=BENCH_SEED)
    options = {"threads": threads} if backend == "onnxruntime" and threads else {}
    console = Console(stderr=True)
    report = run_benchmark(
        bundle,
        cal,
        policies=names,
        budgets=ks,
        lists=kinds,
        thresholds=thresholds,
        dbcache=dbcache,
        backend=backend,
        backend_options=options,
        teacher_path=teacher_bundle,
        teacher_steps=teacher_steps,
        guidance=guidance,
        log=console.print,
    )
    write_together(
        out_dir,
        {
            "bench.json": lambda p: p.write_text(report_json(report)),
            "bench.md": lambda p: p.write_text(markdown(report) + "\n"),
            "bench.png": lambda p: plot(report, p),
        },
    )
    if as_json:
        click.echo(report_json(report))
    else:
        click.echo(markdown(report))
        click.echo(f"report in {out_dir}/ (bench.md, bench.json, bench.png)")


def _numbers(text: str, kind, option: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise click.BadParameter(f"expected comma-separated positive numbers, got {text!r}", param_hint=option)
    return values


def _dbcache(text: str) -> list:
    """'0.2/2,1e9/3' -> [(0.2, 2), (1e9, 3)]; a cap of 0 is no cap."""
    settings = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        try:
            threshold, cap = item.split("/")
            threshold, cap = float(threshold), int(cap)
        except ValueError:
            threshold, cap = -1.0, -1
        if threshold <= 0 or cap < 0:
            raise click.BadParameter(
                f"expected THRESHOLD/CAP pairs like 0.2/2,1e9/3 (threshold > 0, cap >= 0), got {item!r}",
                param_hint="--dbcache",
            )
        settings.append((threshold, cap or None))
    return settings
