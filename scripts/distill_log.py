"""Summarise a training run's log.jsonl in windows of steps: the terms the distillation logs, and the evaluations.

python scripts/distill_log.py runs/student [--window 25] [--keys mse,mse_equal,jvp_rms]
python scripts/distill_log.py runs/student runs/student-plain --evals [--key adherence_full]

--evals prints the evaluation curve instead, one column per run (a Markdown table): the score at each
evaluated step, and per run its best, the largest drop below the best so far, and the last score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = "loss,mse,mse_equal,mse_gap,mse_t0,mse_t1,mse_t2,mse_t3,u_rms,target_rms,jvp_rms,grad_norm"


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """-> (step records, evaluation records) of `run`/log.jsonl (a line cut short by a kill is skipped)."""
    steps, evals = [], []
    for line in (Path(run) / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "eval" in rec:
            evals.append(rec["eval"])
        elif "step" in rec:
            steps.append(rec)
    return steps, evals


def eval_curve(evals: list[dict], key: str = "adherence_full") -> list[dict]:
    """-> per evaluation, in step order: step, value, the best so far and the drop below it (best so far - value)."""
    curve, best = [], None
    for ev in sorted((e for e in evals if key in e), key=lambda e: e["step"]):
        best = ev[key] if best is None else max(best, ev[key])
        curve.append({"step": ev["step"], "value": ev[key], "best": best, "drop": best - ev[key]})
    return curve


def stability(curve: list[dict]) -> dict:
    """-> the best score (and its first step), the largest drop below the best so far (and where), the last."""
    top = max(curve, key=lambda c: (c["value"], -c["step"]))
    worst = max(curve, key=lambda c: (c["drop"], -c["step"]))
    return {
        "best": top["value"],
        "best_step": top["step"],
        "max_drop": worst["drop"],
        "max_drop_step": worst["step"],
        "last": curve[-1]["value"],
        "last_step": curve[-1]["step"],
        "evals": len(curve),
    }


def print_evals(runs: list[Path], key: str) -> None:
    logs = {str(run): read_log(run) for run in runs}
    curves = {run: eval_curve(evals, key) for run, (_, evals) in logs.items()}
    empty = [run for run, c in curves.items() if not c]
    if empty:
        raise SystemExit(f"no '{key}' evaluations in {', '.join(empty)}/log.jsonl: train with --eval-every")
    by_step = {run: {c["step"]: c for c in curve} for run, curve in curves.items()}
    print(f"| step | {' | '.join(curves)} |")
    print("|---" * (len(curves) + 1) + "|")
    for step in sorted({s for steps in by_step.values() for s in steps}):
        cells = []
        for run in curves:
            c = by_step[run].get(step)
            cells.append("" if c is None else f"{c['value']:.3f}" + (f" (-{c['drop']:.3f})" if c["drop"] > 0 else ""))
        print(f"| {step} | {' | '.join(cells)} |")
    print()
    for run, curve in curves.items():
        s = stability(curve)
        print(
            f"{run}: {s['evals']} evaluations of {key}; best {s['best']:.3f} (step {s['best_step']}); largest "
            f"drop below the best so far {s['max_drop']:.3f} (step {s['max_drop_step']}); "
            f"last {s['last']:.3f} (step {s['last_step']})"
        )
        stop = next((r for r in logs[run][0] if "diverged" in r), None)
        if stop:  # the divergence guard's record
            print(f"{run}: stopped by the guard at step {stop['step']}: {stop['diverged']}")


def print_windows(run: Path, window: int, keys: list[str]) -> None:
    steps, evals_list = read_log(run)
    evals = {e["step"]: e for e in evals_list}
    print("steps      " + " ".join(f"{k:>10}" for k in keys) + "  eval")
    for lo in range(steps[0]["step"] - 1 if steps else 0, steps[-1]["step"] if steps else 0, window):
        win = [r for r in steps if lo < r["step"] <= lo + window]
        means = []
        for k in keys:
            vals = [r[k] for r in win if k in r]
            means.append(f"{sum(vals) / len(vals):10.4g}" if vals else f"{'-':>10}")
        ev = evals.get(lo + window)
        note = ", ".join(f"{k} {v:.3g}" for k, v in ev.items() if k != "step") if ev else ""
        print(f"{lo + 1:>4}-{lo + window:<5} " + " ".join(means) + "  " + note)


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError becomes argparse's "invalid positive_int value"
    if value < 1:  # 0: range() raises; below 0: no windows at all
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="Run directories (each with a log.jsonl).")
    ap.add_argument("--window", type=positive_int, default=25)
    ap.add_argument("--keys", default=KEYS)
    ap.add_argument("--evals", action="store_true", help="The evaluation curve of each run, side by side.")
    ap.add_argument("--key", default="adherence_full", help="The evaluation score --evals follows.")
    a = ap.parse_args()
    for run in a.runs:
        if not (run / "log.jsonl").is_file():  # argparse's one error line, not a FileNotFoundError traceback
            ap.error(f"{run} has no log.jsonl: give a training run's directory")
    if a.evals:
        print_evals(a.runs, a.key)
        return
    for run in a.runs:
        if len(a.runs) > 1:
            print(f"# {run}")
        print_windows(run, a.window, a.keys.split(","))


if __name__ == "__main__":
    main()
