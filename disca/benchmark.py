"""`disca-bench`: DisCa against the training-free caches on one bundle, quality vs speed.

Every policy runs at several anchor budgets on the same prompts x seeds, one clip at a time
(batch 1, wall time per clip), on one backend. Quality is measured against all-full sampling
of the same student from the same noise (PSNR / SSIM), and as prompt adherence where the
bundle was trained on disca's synthetic task. The teacher's CFG sampling is the top reference
when its bundle is given.
"""

from __future__ import annotations

import json
import re

import numpy as np

from disca.bundle import Bundle
from disca.calibration.dataset import CalibrationSet, uses_task_vocabulary
from disca.calibration.schedule_search import warmup_anchors
from disca.metrics import psnr, ssim
from disca.runtime.backends import get_backend
from disca.runtime.pipeline import Pipeline
from disca.runtime.sampler import denoise, denoise_cfg
from disca.runtime.schedule import (
    DBCACHE_POLICIES,
    POLICIES,
    THRESHOLD_POLICIES,
    FullPolicy,
    budget_anchors,
    calibrated_forecast_reuse_gaps,
    calibrated_reuse_gaps,
    calibrated_taylor_gaps,
    make_policy,
    uniform_anchors,
)

BENCH_BUDGETS = (14, 12, 10, 8, 6, 5, 4, 3)  # anchor budgets K of 20 steps, about 1.3x to 4x
DEFAULT_POLICIES = tuple(p for p in POLICIES if p != "full")  # all-full is the reference of every row
# Thresholds of the threshold caches, picked on the demo model to span about the speedups of the anchor budgets.
BENCH_THRESHOLDS = {
    "disca-adaptive": (0.1, 0.15, 0.2, 0.3),
    "teacache": (0.2, 0.5, 1.0, 2.0),
    "first-block": (0.2, 0.3, 0.5, 0.8),
}
# DBCache's settings: (threshold, most cached steps in a row; None: no cap), 2 warm-up steps. A cap with a
# threshold nothing reaches is a static cache every cap+1 steps, the library's strongest settings on this model.
BENCH_DBCACHE = ((0.1, 2), (0.2, 2), (1e9, 2), (1e9, 3), (1e9, 4), (1e9, 6))
DBCACHE_WARMUP = 2
# The bench's prompt x seed set is drawn apart from the calibration set (seed 0), on which the TeaCache
# polynomial, the FP8 ranges and the searched anchor lists are fitted: every policy is measured held out.
BENCH_SEED = 1


LIST_KINDS = ("searched", "even", "warm-up")


def anchor_list(manifest: dict, steps: int, k: int, kind: str) -> tuple[list[int], str]:
    """The anchor list of budget k an anchor policy runs: `searched` the bundle's best-known list
    (`budget_anchors`), `even` even spacing, `warm-up` steps 0 and 1 then even spacing to the last step
    (DBCache's static cache; TaylorSeer's forecasts do well on evenly spaced anchors)."""
    if kind == "searched":
        return budget_anchors(manifest, steps, k)
    if kind == "even":
        return uniform_anchors(steps, k), "even"
    if kind == "warm-up":
        return warmup_anchors(steps, k), "warm-up"
    raise ValueError(f"unknown anchor-list kind {kind!r}; choose from {', '.join(LIST_KINDS)}")


def curve_name(row: dict) -> str:
    """One curve per policy and kind of anchor list."""
    kind = row.get("lists", "searched")
    return row["policy"] if kind == "searched" else f"{row['policy']} ({kind} lists)"


def _run_all(backend, cal: CalibrationSet, factories: list, steps, shift, log):
    """Every policy on every clip, clip by clip: each clip runs all policies in turn, so a slow spell on
    a shared machine costs every policy alike; and clip i starts the turn at policy i (mod the count), so
    that no policy always runs at the same place in the turn (with a fixed order, `disca` ran 1-4 ms a clip
    slower than `disca-predictor` right after it, on the same graph calls, at 8 of 12 budgets).
    -> [(outputs (n, ...), ms of each clip (n,), passes {graph: count per clip})], one per factory."""
    outs, ms = [[] for _ in factories], [[] for _ in factories]
    passes = [{} for _ in factories]
    for factory in factories:  # unmeasured: the first calls of a graph pay for its setup
        denoise(backend, cal.noise[:1], cal.texts[0][None], steps=steps, shift=shift, policy=factory())
    for i in range(len(cal)):
        for j in (np.arange(len(factories)) + i) % len(factories):
            factory = factories[j]
            out, stats = denoise(
                backend, cal.noise[i : i + 1], cal.texts[i][None], steps=steps, shift=shift, policy=factory()
            )
            outs[j].append(out[0])
            ms[j].append(stats.total_ms)
            passes[j].setdefault("full", 0)
            for g, (c, _) in stats.graphs.items():  # `first`: partial passes, embedders + block 0
                passes[j][g] = passes[j].get(g, 0) + c
        if (i + 1) % 8 == 0 or i + 1 == len(cal):
            log(f"  {i + 1}/{len(cal)} clips")
    n = len(cal)
    return [(np.stack(o), np.array(t), {g: c / n for g, c in p.items()}) for o, t, p in zip(outs, ms, passes)]


def run_benchmark(
    bundle_path,
    cal: CalibrationSet,
    *,
    policies=DEFAULT_POLICIES,
    budgets=BENCH_BUDGETS,
    thresholds=None,
    dbcache=None,
    lists=("searched",),
    backend: str = "onnxruntime",
    backend_options=None,
    teacher_path=None,
    teacher_steps: int = 50,
    guidance: float = 4.0,
    log=lambda msg: None,
) -> dict:
    bundle = Bundle.open(bundle_path)
    steps, shift = bundle.schedule.steps, bundle.schedule.shift
    task = uses_task_vocabulary(bundle)

    def adherence(outs):
        from disca.task import score

        return round(score(np.clip(outs, -1, 1), cal.prompts)["all"], 4)

    thresholds = {**BENCH_THRESHOLDS, **(thresholds or {})}
    coefficients = (bundle.manifest.get("teacache") or {}).get("coefficients")
    reuse_gaps = calibrated_reuse_gaps(bundle.manifest, steps, shift)  # DisCa as the runtime runs it
    taylor_gaps = calibrated_taylor_gaps(bundle.manifest, steps, shift)
    gaps = dict(reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps)
    gaps["forecast_reuse_gaps"] = calibrated_forecast_reuse_gaps(bundle.manifest, steps, shift)
    runs = [  # (policy, setting, policy factory): anchor policies per budget, threshold policies per threshold
        (
            name,
            {"anchors": k, "anchor_list": a, "anchor_source": src, "lists": kind},
            lambda name=name, a=a: make_policy(name, a, **gaps),
        )
        for k in budgets
        for kind in lists
        for a, src in [anchor_list(bundle.manifest, steps, k, kind)]
        for name in policies
        if name not in THRESHOLD_POLICIES
    ]
    runs += [
        (
            name,
            {"threshold": x},
            lambda name=name, x=x: make_policy(
                name, threshold=x, coefficients=coefficients, reuse_gaps=reuse_gaps, taylor_gaps=taylor_gaps
            ),
        )
        for name in policies
        if name in THRESHOLD_POLICIES and name not in DBCACHE_POLICIES
        for x in thresholds[name]
    ]
    runs += [
        (
            name,
            {"threshold": x, "max_cached": m, "warmup": DBCACHE_WARMUP},
            lambda name=name, x=x, m=m: make_policy(name, threshold=x, warmup=DBCACHE_WARMUP, max_cached=m),
        )
        for name in policies
        if name in DBCACHE_POLICIES
        for x, m in dbcache or BENCH_DBCACHE
    ]
    runs.insert(0, ("full", {"anchors": steps}, FullPolicy))
    log(f"{len(runs)} runs (the all-full reference first) on each of {len(cal)} clips x {steps} steps")
    with get_backend(backend, bundle, **(backend_options or {})) as b:
        results = _run_all(b, cal, [factory for _, _, factory in runs], steps, shift, log)
    ref, full_ms = results[0][0], float(results[0][1].mean())
    rows = []
    for (name, setting, _), (outs, clip_ms, passes) in zip(runs, results):
        ms = float(clip_ms.mean())
        row = {"policy": name, **setting, "ms_per_clip": ms, "passes": passes}
        if name != "full":
            row["psnr_db"], row["ssim"] = round(psnr(outs, ref), 3), round(ssim(outs, ref), 4)
        # per clip, for the margins' intervals (`margin_intervals`): time, and squared error against all-full
        row["clip_ms"] = [round(float(t), 3) for t in clip_ms]
        if name != "full":
            err = (np.asarray(outs, np.float64) - np.asarray(ref, np.float64)) ** 2
            row["clip_mse"] = [float(f"{e:.6g}") for e in err.reshape(len(err), -1).mean(axis=1)]
        if task:
            row["adherence"] = adherence(outs)
        rows.append(row)
        if name != "full":
            speed = f"{full_ms / ms:4.2f}x, {passes['full']:.1f} full"
            log(f"  {name:12s} {_setting(setting)}: {speed}, {row['psnr_db']:6.2f} dB")
    for row in rows:
        row["speedup_vs_full"] = round(full_ms / row["ms_per_clip"], 3)
    report = {"bundle": str(bundle.path), "backend": backend, "samples": len(cal), "steps": steps}
    report |= {"disca_reuse_gaps": reuse_gaps, "disca_taylor_gaps": taylor_gaps, "rows": rows}
    if teacher_path is not None:
        teacher = Bundle.open(teacher_path)
        nulls = Pipeline(teacher, backend=None)
        with get_backend(backend, teacher, **(backend_options or {})) as b:
            null = nulls.embed_null(cal.texts[0].shape[0])[None]  # an unmeasured warm-up run, as for the others
            denoise_cfg(b, cal.noise[:1], cal.texts[0][None], null, steps=teacher_steps, shift=shift, guidance=guidance)
            outs, ms = [], 0.0
            for i in range(len(cal)):
                null = nulls.embed_null(cal.texts[i].shape[0])[None]
                out, stats = denoise_cfg(
                    b,
                    cal.noise[i : i + 1],
                    cal.texts[i][None],
                    null,
                    steps=teacher_steps,
                    shift=shift,
                    guidance=guidance,
                )
                outs.append(out[0])
                ms += stats.total_ms
        teacher_row = {"policy": f"teacher {teacher_steps}-step CFG", "ms_per_clip": ms / len(cal)}
        teacher_row["passes"] = {"full": 2 * teacher_steps}
        if task:
            teacher_row["adherence"] = adherence(np.stack(outs))
        report["teacher"] = teacher_row
        for row in rows:
            row["speedup_vs_teacher"] = round(teacher_row["ms_per_clip"] / row["ms_per_clip"], 3)
    return report


def report_json(report: dict) -> str:
    """The report as indented JSON with each list of numbers on one line (the per-clip records would
    otherwise take a line per number)."""
    text = json.dumps(report, indent=2)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def markdown(report: dict) -> str:
    has_adh = any("adherence" in r for r in report["rows"])
    has_teacher = "teacher" in report
    head = ["policy", "setting", "passes / clip", "ms / clip", "speedup vs full"]
    head += ["speedup vs teacher"] if has_teacher else []
    head += ["PSNR vs full (dB)", "SSIM"] + (["adherence"] if has_adh else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = ([report["teacher"]] if has_teacher else []) + report["rows"]
    for r in rows:
        passes = ", ".join(f"{v:.3g} {g}" for g, v in r["passes"].items())
        setting = _setting(r)
        cells = [r["policy"], setting, passes, f"{r['ms_per_clip']:.0f}"]
        cells.append(f"{r['speedup_vs_full']:.2f}x" if "speedup_vs_full" in r else "")
        if has_teacher:
            cells.append(f"{r['speedup_vs_teacher']:.2f}x" if "speedup_vs_teacher" in r else "1.00x")
        cells += [f"{r['psnr_db']:.2f}" if "psnr_db" in r else "", f"{r['ssim']:.3f}" if "ssim" in r else ""]
        cells += [f"{r['adherence']:.3f}" if "adherence" in r else ""] if has_adh else []
        lines.append("| " + " | ".join(cells) + " |")
    names = {r["policy"].startswith("disca") for r in report["rows"] if r["policy"] != "full"}
    if names == {True, False}:  # both families ran: DisCa's margin at each speedup
        lines += ["", "Best PSNR among the rows at least this fast:", "", margins_markdown(report)]
    return "\n".join(lines)


MARGIN_SPEEDS = (1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6, 3.8, 4.0)


def margins(report: dict, speeds=MARGIN_SPEEDS) -> list[dict]:
    """At each speedup s: the best PSNR of a DisCa policy (any `disca*`) and of a training-free one among the
    rows measured at s or faster, and DisCa's margin. -> [{speedup, disca, training_free, margin_db}], each
    best given as its row (None where no row is that fast)."""
    rows = [r for r in report["rows"] if r["policy"] != "full"]
    out = []
    for speed in speeds:
        fast = [r for r in rows if r["speedup_vs_full"] >= speed]
        ours = max((r for r in fast if r["policy"].startswith("disca")), key=lambda r: r["psnr_db"], default=None)
        theirs = max((r for r in fast if not r["policy"].startswith("disca")), key=lambda r: r["psnr_db"], default=None)
        margin = round(ours["psnr_db"] - theirs["psnr_db"], 2) if ours and theirs else None
        out.append({"speedup": speed, "disca": ours, "training_free": theirs, "margin_db": margin})
    return out


def margin_intervals(
    report: dict, speeds=MARGIN_SPEEDS, draws: int = 2000, level: float = 0.9, target_db: float = 1.0, seed: int = 0
) -> list[dict] | None:
    """How much of each margin is the clip set's luck: the clips drawn again with replacement `draws` times
    (a bootstrap), each draw's speedups and PSNRs recomputed from the per-clip times and squared errors, and
    `margins` redone on it, so a row can fall out of a speed bin as well as lose dB.
    -> [{speedup, low, high, chance_target}] per speed: the central `level` interval of the margin (dB) and
    the share of draws where DisCa leads by `target_db` or more; None for a report without per-clip records."""
    rows = [r for r in report["rows"] if r["policy"] != "full"]
    full = next((r for r in report["rows"] if r["policy"] == "full"), None)
    per_clip = full is not None and "clip_ms" in full and all("clip_mse" in r and "clip_ms" in r for r in rows)
    if not rows or not per_clip:
        return None
    full_ms = np.asarray(full["clip_ms"], np.float64)
    ms = np.asarray([r["clip_ms"] for r in rows], np.float64)  # (rows, clips)
    mse = np.asarray([r["clip_mse"] for r in rows], np.float64)
    ours = np.array([r["policy"].startswith("disca") for r in rows])
    rng = np.random.default_rng(seed)
    margin = np.full((draws, len(speeds)), np.nan)
    for start in range(0, draws, 250):  # in chunks: (rows, draws, clips) at once would be large
        idx = rng.integers(0, len(full_ms), (min(250, draws - start), len(full_ms)))
        speed = full_ms[idx].mean(axis=1)[:, None] / ms[:, idx].mean(axis=2).T  # (draws, rows)
        with np.errstate(divide="ignore"):
            db = 10 * np.log10(4.0 / mse[:, idx].mean(axis=2).T)  # psnr's data range 2: peak^2 = 4
        for j, s in enumerate(speeds):
            fast = speed >= s
            best_ours = np.where(fast & ours, db, -np.inf).max(axis=1)
            best_theirs = np.where(fast & ~ours, db, -np.inf).max(axis=1)
            ok = np.isfinite(best_ours) & np.isfinite(best_theirs)
            margin[start : start + len(idx), j] = np.where(ok, best_ours - best_theirs, np.nan)
    out = []
    for j, s in enumerate(speeds):
        m = margin[:, j][~np.isnan(margin[:, j])]
        if len(m) < draws / 2:  # in most draws no row of one family is this fast
            out.append({"speedup": s, "low": None, "high": None, "chance_target": None})
            continue
        low, high = np.percentile(m, [50 * (1 - level), 50 * (1 + level)])
        chance = float(np.mean(margin[:, j] >= target_db))  # a draw without a row this fast does not count as met
        out.append({"speedup": s, "low": round(float(low), 2), "high": round(float(high), 2), "chance_target": chance})
    return out


def margins_markdown(report: dict) -> str:
    def cell(r):
        if r is None:
            return "none this fast"
        return f"{r['psnr_db']:.2f} ({r['policy']}, {_setting(r)}, {r['speedup_vs_full']:.2f}x)"

    intervals = margin_intervals(report)
    head = "| speedup >= | best DisCa | best training-free | margin (dB) |"
    if intervals is None:
        lines = [head, "|---|---|---|---|"]
    else:
        lines = [head + " 90% interval, clips resampled | chance of >= 1 dB |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(margins(report)):
        if m["disca"] is None and m["training_free"] is None:
            continue
        margin = f"{m['margin_db']:+.2f}" if m["margin_db"] is not None else ""
        line = f"| {m['speedup']:.1f}x | {cell(m['disca'])} | {cell(m['training_free'])} | {margin} |"
        if intervals is not None:
            iv = intervals[i]
            spread = f"{iv['low']:+.2f} to {iv['high']:+.2f}" if iv["low"] is not None else ""
            chance = f"{100 * iv['chance_target']:.0f}%" if iv["chance_target"] is not None else ""
            line += f" {spread} | {chance} |"
        lines.append(line)
    return "\n".join(lines)


def _setting(row: dict) -> str:
    if "max_cached" in row:
        cap = f"<= {row['max_cached']} cached in a row" if row["max_cached"] else "no cap"
        threshold = "no threshold" if row["threshold"] >= 1e6 else f"threshold {row['threshold']:g}"
        return f"{threshold}, {cap}, warm-up {row['warmup']}"
    if "threshold" in row:
        return f"threshold {row['threshold']:g}"
    if "anchor_source" in row:
        return f"{row['anchors']} anchors ({row['anchor_source']})"
    return f"{row['anchors']} anchors" if "anchors" in row else ""


def plot(report: dict, path) -> None:
    """PSNR (and adherence) vs speedup over all-full, one curve per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["policy"] != "full"]
    has_adh = any("adherence" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_adh else 1, figsize=(11 if has_adh else 6, 4), dpi=120, squeeze=False)
    for policy in dict.fromkeys(curve_name(r) for r in rows):
        pts = sorted((r for r in rows if curve_name(r) == policy), key=lambda r: r["speedup_vs_full"])  # ties happen
        speedups = [r["speedup_vs_full"] for r in pts]
        axes[0][0].plot(speedups, [r["psnr_db"] for r in pts], "o-", label=policy)
        if has_adh:
            axes[0][1].plot(speedups, [r["adherence"] for r in pts], "o-", label=policy)
    axes[0][0].set_ylabel("PSNR vs all-full student (dB)")
    if has_adh:
        full = report["rows"][0].get("adherence")
        axes[0][1].axhline(full, color="gray", linestyle="--", label="all-full student")
        if "teacher" in report:
            axes[0][1].axhline(report["teacher"]["adherence"], color="black", linestyle=":", label="teacher CFG")
        axes[0][1].set_ylabel("prompt adherence")
    for ax in axes[0]:
        ax.set_xlabel("speedup over all-full sampling (measured)")
        ax.grid(alpha=0.3)
    # One legend on the right, off the curves (the last axes has every label: policies and references).
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle(f"{report['samples']} clips, {report['steps']} steps, {report['backend']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
