"""Anchor-schedule search: which K of N steps should run the full DiT.

Greedy forward selection on real runs: start from {0} (step 0 must be an anchor) and, K-1
times, add the step whose DisCa run comes closest to all-full sampling of the same model on
the calibration set (PSNR over the whole set). Each round costs one DisCa run per candidate
step, N(N-1)/2 runs for the whole quality-vs-anchors curve (190 for 20 steps).

Greedy lists are nested (K + 1 = K plus one step) and crowd the early steps; forecasts from two
anchors (TaylorSeer, the forecast predictor) want even spacing up to the last steps. So `refine`
then starts each budget from the best of the greedy, even and warm-up lists and moves one anchor
at a time by one step while that improves the runs (local search).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from disca.calibration.dataset import CalibrationSet, sample_all
from disca.metrics import psnr
from disca.runtime.schedule import OFFICIAL_ANCHORS, uniform_anchors


@dataclass
class Point:
    k: int
    anchors: list[int]
    psnr_db: float  # DisCa vs all-full over the set (inf when every step is an anchor)
    adherence: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["psnr_db"] = None if not np.isfinite(self.psnr_db) else round(self.psnr_db, 3)
        return d


def disca_quality(backend, cal: CalibrationSet, reference, *, steps: int, shift: float, reuse_gaps=(), taylor_gaps=()):
    """anchors -> PSNR of DisCa's runs against the all-full `reference` over the set."""

    def quality(anchors) -> float:
        out = sample_all(
            backend, cal, steps=steps, shift=shift, anchors=anchors, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps
        )
        return psnr(out, reference)

    return quality


def warmup_anchors(steps: int, k: int) -> list[int]:
    """Step 0, then k - 1 anchors spread evenly over steps 1..N-1 (DBCache's warm-up and static cache)."""
    if k < 2:
        return [0]
    return sorted({0, *(int(round(x)) for x in np.linspace(1, steps - 1, k - 1))})


def refine(quality, curve: list[Point], *, steps: int, ks, rounds: int = 3, log=lambda msg: None) -> list[Point]:
    """For each budget in `ks`: the best of the curve's list, even spacing and `warmup_anchors`, then up to
    `rounds` local moves (the one-anchor, one-step shift that improves most). -> the curve with the
    improved points replaced."""
    curve = list(curve)
    for k in ks:
        if not 2 <= k < steps:
            continue
        scored = {tuple(curve[k - 1].anchors): curve[k - 1].psnr_db}
        for start in (uniform_anchors(steps, k), warmup_anchors(steps, k)):
            if len(start) == k and tuple(start) not in scored:
                scored[tuple(start)] = quality(start)
        best = max(scored, key=scored.get)
        for _ in range(rounds):
            moves = {
                tuple(sorted({*best} - {a} | {a + d}))
                for i, a in enumerate(best)
                if i > 0
                for d in (-1, 1)
                if 0 < a + d < steps and a + d not in best
            }
            for m in moves - scored.keys():
                scored[m] = quality(list(m))
            step_best = max(moves, key=scored.get)
            if scored[step_best] <= scored[best]:
                break
            best = step_best
        if scored[best] > curve[k - 1].psnr_db:
            log(f"  {k:2d} anchors: {curve[k - 1].psnr_db:6.2f} -> {scored[best]:6.2f} dB  {list(best)}")
            curve[k - 1] = Point(k, list(best), scored[best])
    return curve


def greedy_curve(
    backend, cal: CalibrationSet, *, steps: int, shift: float, reuse_gaps=(), log=lambda msg: None, taylor_gaps=()
):
    """-> (all-full reference latents, [Point for k = 1..steps]) along the greedy path (DisCa runs with
    `reuse_gaps` and `taylor_gaps`, as the runtime will run them)."""
    reference = sample_all(backend, cal, steps=steps, shift=shift)
    quality = disca_quality(
        backend, cal, reference, steps=steps, shift=shift, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps
    )

    anchors = [0]
    curve = [Point(1, [0], quality([0]))]
    while len(anchors) < steps:
        scored = [(quality(sorted([*anchors, s])), s) for s in range(1, steps) if s not in anchors]
        best_db, best = max(scored)
        anchors = sorted([*anchors, best])
        curve.append(Point(len(anchors), anchors, best_db))
        log(f"  {len(anchors):2d} anchors: +step {best:2d} -> {best_db:6.2f} dB  {anchors}")
    return reference, curve


def compare(
    backend,
    cal,
    reference,
    curve,
    *,
    steps: int,
    shift: float,
    ks=(6, 8, 10),
    reuse_gaps=(),
    adherence=None,
    taylor_gaps=(),
) -> list[dict]:
    """Searched vs official vs uniform anchor lists at each k: PSNR against all-full (and adherence)."""
    rows = []
    for k in ks:
        if not 1 <= k <= steps:
            continue
        lists = {"searched": curve[k - 1].anchors, "uniform": uniform_anchors(steps, k)}
        if (steps, k) in OFFICIAL_ANCHORS:
            lists["official"] = OFFICIAL_ANCHORS[(steps, k)]
        for name, anchors in lists.items():
            out = sample_all(
                backend, cal, steps=steps, shift=shift, anchors=anchors, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps
            )
            row = {"k": k, "schedule": name, "anchors": anchors, "psnr_db": round(psnr(out, reference), 3)}
            if adherence is not None:
                row["adherence"] = adherence(out)
            rows.append(row)
    return rows


def plot_curve(curve: list[Point], rows: list[dict], path, title: str) -> None:
    """Quality-vs-anchors PNG: the greedy curve, with the official and uniform lists marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [p for p in curve if np.isfinite(p.psnr_db)]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([p.k for p in finite], [p.psnr_db for p in finite], "o-", label="searched (greedy)")
    for name, marker in (("official", "s"), ("uniform", "^")):
        pts = [(r["k"], r["psnr_db"]) for r in rows if r["schedule"] == name]
        if pts:
            ax.plot(*zip(*pts), marker, markersize=8, linestyle="none", label=name)
    ax.set_xlabel(f"anchor steps (full DiT) of {len(curve)}")
    ax.set_ylabel("PSNR vs all-full sampling (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown_table(curve: list[Point], rows: list[dict]) -> str:
    lines = ["| anchors K | searched anchors | PSNR vs all-full (dB) |", "|---|---|---|"]
    for p in curve:
        db = "inf" if not np.isfinite(p.psnr_db) else f"{p.psnr_db:.2f}"
        lines.append(f"| {p.k} | {p.anchors} | {db} |")
    if rows:
        has_adh = any("adherence" in r for r in rows)
        lines += ["", "| K | schedule | anchors | PSNR (dB) |" + (" adherence |" if has_adh else "")]
        lines.append("|---|---|---|---|" + ("---|" if has_adh else ""))
        for r in rows:
            adh = f" {r['adherence']:.3f} |" if has_adh else ""
            lines.append(f"| {r['k']} | {r['schedule']} | {r['anchors']} | {r['psnr_db']:.2f} |{adh}")
    return "\n".join(lines)
