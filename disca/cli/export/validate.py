"""`disca-export validate`: every graph variant on every backend against the fp32 reference, and DisCa
end to end; non-zero exit on failure (the gate a deployment pipeline runs)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from disca.bundle import Bundle
from disca.cli._common import FiniteFloat, clean_errors
from disca.cli.export._common import calibration_samples, samples_option


@click.command("validate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", "backends", default="onnxruntime", show_default=True, help="Backends, comma-separated.")
@click.option("--prompts", type=click.Path(path_type=Path), help="Prompts for the end-to-end check, one per line.")
@samples_option(8, "Prompt x seed samples of the end-to-end check.")
@click.option(
    "--min-psnr",
    type=FiniteFloat(),
    help="Lowest DisCa-vs-all-full PSNR (dB) that passes [default: 25; a bundle's stored thresholds may raise it].",
)
@click.option(
    "--max-adherence-drop",
    type=FiniteFloat(min=0),
    help="Largest adherence drop from all-full that passes [default: 0.02; a bundle's may lower it].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def validate_cmd(bundle, backends, prompts, samples, min_psnr, max_adherence_drop, as_json):
    """Check BUNDLE before deploying it: every graph variant on every backend against the fp32
    reference (two shapes), and DisCa end to end against all-full sampling. The pass thresholds are the
    defaults or the options below; thresholds stored in the manifest can only make them stricter.
    Exits non-zero when anything fails.

    \b
    Examples:
      disca-export validate demo
      disca-export validate bundles/student --backend onnxruntime,torch --json   # needs a bundle with weights
    """
    from disca.calibration.validation import thresholds, validate_bundle
    from disca.runtime.backends import BACKENDS

    names = list(dict.fromkeys(x.strip() for x in backends.split(",") if x.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        got = f"unknown backend {unknown[0]!r}" if unknown else "no backend"
        raise click.BadParameter(
            f"{got}; give one or more of {', '.join(BACKENDS)}, comma-separated", param_hint="--backend"
        )
    b = Bundle.open(bundle)
    cal = calibration_samples(b, prompts, samples)
    limits = thresholds(b, min_psnr_db=min_psnr, max_adherence_drop=max_adherence_drop)
    report = validate_bundle(bundle, cal, names, log=Console(stderr=True).print, limits=limits)
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
    if report["unchecked"]:
        raise click.ClickException(
            f"bundle {bundle} was not validated on {', '.join(report['unchecked'])}: nothing of it could run here "
            "(the table says why); drop it from --backend or run where it can"
        )
    if not report["ok"]:
        raise click.ClickException(f"bundle {bundle} failed validation (thresholds: {report['thresholds']})")
