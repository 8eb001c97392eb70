"""Runtime benchmark of a bundle: DisCa vs all-full sampling, ONNX Runtime vs torch eager.

Each backend lives in its own worker process (torch's OpenMP threads spin after
its ops and would slow an ONNX Runtime call in the same process), and the runs
are interleaved round by round (these machines are noisy: compare only figures
taken together); each figure is the median over --repeats.

    python scripts/bench_core.py demo --repeats 5 --backends onnxruntime [--json]   # demo: the shipped one
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics

import click
from rich.console import Console
from rich.table import Table

from disca.bundle import Bundle, Schedule
from disca.cli._common import clean_errors
from disca.runtime import Pipeline
from disca.runtime.backends import BACKENDS


def _worker(conn, bundle: str, backend: str, prompt: str) -> None:
    try:
        pipe = Pipeline.load(bundle, backend=backend)
        pipe.embed_prompt(prompt)  # e.g. an unknown word: refused now, not in the first run
    except Exception as e:  # noqa: BLE001 - the parent blocks on this pipe: send it the reason rather than die
        conn.send({"error": f"backend {backend}: {e}"})
        return
    conn.send(pipe.bundle.schedule.to_dict())
    while (anchors := conn.recv()) is not None:
        conn.send(pipe.generate(prompt, anchors=anchors, seed=0).stats.to_dict())


def _backend_list(ctx, param, value: str) -> list[str]:
    names = [b.strip() for b in value.split(",")]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or len(set(names)) != len(names):  # a duplicate would share one worker's pipe with another
        raise click.BadParameter(f"got {value!r}: give distinct names, comma-separated, of {', '.join(BACKENDS)}")
    return names


@click.command()
@click.argument("bundle")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--backends", default="onnxruntime,torch", show_default=True, callback=_backend_list)
@click.option("--prompt", default="a red circle moving left", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@clean_errors
def main(bundle, repeats, backends, prompt, as_json):
    Bundle.open(bundle)  # a bad path fails here, in one line, not in the workers
    ctx = mp.get_context("spawn")
    conns = {}
    for b in backends:
        parent, child = ctx.Pipe()
        ctx.Process(target=_worker, args=(child, bundle, b, prompt), daemon=True).start()
        conns[b] = parent
    first = {b: conns[b].recv() for b in backends}
    for reply in first.values():
        if "error" in reply:
            raise click.ClickException(reply["error"])
    schedule = Schedule(**first[backends[0]])
    runs = {(b, p): [] for b in backends for p in ("disca", "full")}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for b in backends:
            for policy, anchors in (("disca", schedule.anchors), ("full", "full")):
                conns[b].send(anchors)
                runs[b, policy].append(conns[b].recv())
    for c in conns.values():
        c.send(None)
    metrics = ("ms_per_full", "ms_per_predictor", "ms_per_head", "ms_per_cached", "overhead_ms", "total_ms")
    med = {
        k: {
            m: statistics.median(r[m] for r in v[1:] if r[m] is not None) if any(r[m] for r in v[1:]) else None
            for m in metrics
        }
        for k, v in runs.items()
    }
    ref = backends[0]
    f, p = med[ref, "disca"]["ms_per_full"], med[ref, "disca"]["ms_per_predictor"]
    c = med[ref, "disca"]["ms_per_cached"]
    n_full, n_cached = len(schedule.anchors), schedule.steps - len(schedule.anchors)
    bound = schedule.steps / (n_full + n_cached * c / f)
    speedup = med[ref, "full"]["total_ms"] / med[ref, "disca"]["total_ms"]
    summary = {
        "bundle": bundle,
        "steps": schedule.steps,
        "anchors": schedule.anchors,
        "repeats": repeats,
        "median": {f"{b}/{pol}": v for (b, pol), v in med.items()},
        f"{ref}_predictor_to_full": p / f,
        f"{ref}_cached_step_to_full": c / f,
        f"{ref}_overhead_fraction": med[ref, "disca"]["overhead_ms"] / med[ref, "disca"]["total_ms"],
        f"{ref}_speedup_disca_over_full": speedup,
        f"{ref}_speedup_bound": bound,
        f"{ref}_speedup_to_bound": speedup / bound,
    }
    for b in backends[1:]:
        summary[f"{b}_to_{ref}_ms_per_full"] = med[b, "full"]["ms_per_full"] / med[ref, "full"]["ms_per_full"]
        summary[f"{b}_to_{ref}_ms_per_predictor"] = med[b, "disca"]["ms_per_predictor"] / p
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(
        "backend / policy",
        "ms per full",
        "ms per predictor",
        "ms per head",
        "ms per cached step",
        "overhead ms",
        "total ms",
        title=f"{bundle}: {schedule.steps} steps, anchors {schedule.anchors}, median of {repeats}",
    )
    for (b, pol), v in med.items():
        table.add_row(
            f"{b} / {pol}",
            *(f"{v[m]:.2f}" if v[m] is not None else "-" for m in metrics),
        )
    console = Console()
    console.print(table)
    for k, v in summary.items():
        if isinstance(v, float):
            console.print(f"{k}: {v:.4f}")


if __name__ == "__main__":
    main()
