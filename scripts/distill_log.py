"""Summarise a training run's log.jsonl in windows of steps: the terms the distillation logs, and the evaluations.

python scripts/distill_log.py runs/student [--window 25] [--keys mse,mse_equal,jvp_rms]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = "loss,mse,mse_equal,mse_gap,mse_t0,mse_t1,mse_t2,mse_t3,u_rms,target_rms,jvp_rms,grad_norm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--keys", default=KEYS)
    a = ap.parse_args()
    keys = a.keys.split(",")
    rows = [json.loads(line) for line in (a.run / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["eval"]["step"]: r["eval"] for r in rows if "eval" in r}
    steps = [r for r in rows if "eval" not in r]
    print("steps      " + " ".join(f"{k:>10}" for k in keys) + "  eval")
    for lo in range(steps[0]["step"] - 1 if steps else 0, steps[-1]["step"] if steps else 0, a.window):
        win = [r for r in steps if lo < r["step"] <= lo + a.window]
        means = []
        for k in keys:
            vals = [r[k] for r in win if k in r]
            means.append(f"{sum(vals) / len(vals):10.4g}" if vals else f"{'-':>10}")
        ev = evals.get(lo + a.window)
        note = ", ".join(f"{k} {v:.3g}" for k, v in ev.items() if k != "step") if ev else ""
        print(f"{lo + 1:>4}-{lo + a.window:<5} " + " ".join(means) + "  " + note)


if __name__ == "__main__":
    main()
