"""The training-evaluation scripts: distill_log's evaluation curve (synthetic log) and eval_restriction's
table on the shipped checkpoints (2 prompts, 2 steps: seconds)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_curve_tracks_the_drop_below_the_best_so_far(tmp_path, capsys, monkeypatch):
    log = _script("distill_log")
    scores = {100: 0.5, 200: 0.9, 300: 0.875, 400: 0.95, 500: 0.9, 600: 0.95}
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 601)]
    for s, v in scores.items():
        lines.insert(s + list(scores).index(s), json.dumps({"eval": {"step": s, "adherence_full": v}}))
    lines.append(json.dumps({"step": 601, "loss": 9.0, "diverged": "mse rose to 3 (smoothed), 21x its lowest"}))
    lines.append('{"step": 602, "lo')  # a line cut short by a kill
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")

    steps, evals = log.read_log(tmp_path)
    assert len(steps) == 601 and [e["step"] for e in evals] == list(scores)
    curve = log.eval_curve(evals)
    assert [c["best"] for c in curve] == [0.5, 0.9, 0.9, 0.95, 0.95, 0.95]
    assert [round(c["drop"], 6) for c in curve] == [0, 0, 0.025, 0, 0.05, 0]  # the ramp-up is no drop
    s = log.stability(curve)
    assert (s["best"], s["best_step"], round(s["max_drop"], 6), s["max_drop_step"]) == (0.95, 400, 0.05, 500)
    assert (s["last"], s["last_step"], s["evals"]) == (0.95, 600, 6)

    monkeypatch.setattr("sys.argv", ["distill_log.py", str(tmp_path), "--evals"])
    log.main()
    out = capsys.readouterr().out
    assert "| 500 | 0.900 (-0.050) |" in out and "| 400 | 0.950 |" in out
    assert "best 0.950 (step 400); largest drop below the best so far 0.050 (step 500)" in out
    assert "stopped by the guard at step 601: mse rose to 3 (smoothed), 21x its lowest" in out


def test_eval_restriction_rows_and_teacher_cache(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    er = _script("eval_restriction")
    cache = tmp_path / "teacher.npz"
    args = [
        "--teacher",
        str(ROOT / "checkpoints/demo-teacher"),
        "--n",
        "2",
        "--teacher-steps",
        "2",
        "--steps",
        "3,2",
        "--teacher-rows",
        "2",
        "--cache",
        str(cache),
        "--json",
        f"shipped={ROOT / 'checkpoints/demo-predictor'}",
    ]
    first = CliRunner().invoke(er.main, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    rows = {r["sampling"]: r for r in report["students"]["shipped"]}
    assert list(rows) == ["3 steps", "2 steps", "DisCa 8 of 20"]
    assert (rows["3 steps"]["full_passes"], rows["3 steps"]["predictor_passes"]) == (3, 0)
    assert (rows["DisCa 8 of 20"]["full_passes"], rows["DisCa 8 of 20"]["predictor_passes"]) == (8, 12)
    assert all(0 <= r["adherence"] <= 1 and np.isfinite(r["psnr_vs_teacher_db"]) for r in rows.values())
    (teacher_row,) = report["students"]["teacher, CFG 4"]
    assert (teacher_row["sampling"], teacher_row["full_passes"]) == ("2 steps", 4)  # two passes a step
    # the reference is the teacher at --teacher-steps 2 here: its own 2-step row is that same clip
    assert teacher_row["psnr_vs_teacher_db"] == float("inf")

    # The cache is read back when the settings match: a changed reference changes every PSNR, not the adherence.
    with np.load(cache) as f:
        key, clips = str(f["key"]), f["clips"]
    np.savez(cache, clips=np.zeros_like(clips), key=key)
    again = json.loads(CliRunner().invoke(er.main, args).output)["students"]["shipped"]
    for before, after in zip(report["students"]["shipped"], again, strict=True):
        assert after["adherence"] == before["adherence"]
        assert after["psnr_vs_teacher_db"] != pytest.approx(before["psnr_vs_teacher_db"])

    bad = CliRunner().invoke(er.main, [*args[:-1], f"teacher={ROOT / 'checkpoints/demo-teacher'}"])
    assert bad.exit_code != 0 and "is not a distilled student" in bad.output


def test_bench_graphs_times_each_graph_of_the_shipped_demo():
    bg = _script("bench_graphs")
    result = CliRunner().invoke(bg.main, [str(ROOT / "disca/demo"), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "demo" in line)
    cells = [c.strip() for c in row.strip("│| ").split("│")]
    full, predictor, head = (float(c) for c in cells[1:4])
    assert full > predictor > 0 and full > head > 0  # a cached step's graphs are cheaper than the full pass
