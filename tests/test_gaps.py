"""DisCa's per-gap fallback: the calibration of predictor vs reuse gap by gap, the policy that runs it,
and the schedule CLI that stores it (tiny model, ONNX Runtime CPU and torch)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from disca.benchmark import run_benchmark
from disca.bundle import Bundle
from disca.calibration.dataset import CalibrationSet, calibration_set, read_prompts, sample_all
from disca.calibration.gaps import cached_gaps, cached_steps_record, choose_on_runs, gap_errors
from disca.calibration.trajectories import RecordingBackend
from disca.cli.export import default_graphs
from disca.cli.export import main as export_cli
from disca.cli.run import main as run_cli
from disca.metrics import psnr
from disca.models import PredictorConfig, build, randomize_
from disca.runtime import Pipeline
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import (
    DiscaPolicy,
    FullPolicy,
    ReusePolicy,
    calibrated_forecast_reuse_gaps,
    calibrated_reuse_gaps,
    calibrated_taylor_gaps,
    make_policy,
    sigmas,
)
from tests.test_cli import error_line, invoke

PROMPTS = ["a red circle", "the blue square moving up"]


def _random_set(cfg, n=3, seed=0) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    texts = [rng.standard_normal((4, cfg.dit.text_dim)).astype(np.float32) for _ in range(n)]
    noise = rng.standard_normal((n, cfg.dit.in_channels, 2, 8, 8)).astype(np.float32)
    return CalibrationSet([f"p{i}" for i in range(n)], texts, noise)


def test_disca_reuses_the_cache_on_the_calibrated_gaps(tiny_bundle):
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((1, 4, 16)).astype(np.float32)
    anchors = [0, 3]
    with OnnxRuntimeBackend(Bundle.open(tiny_bundle)) as b:
        run = lambda policy: denoise(b, latent, text, steps=6, shift=3.0, policy=policy)  # noqa: E731
        pure, pure_stats = run(DiscaPolicy(anchors))
        mixed, stats = run(DiscaPolicy(anchors, reuse_gaps=[1]))
        every, _ = run(DiscaPolicy(anchors, reuse_gaps=[1, 2]))
        reuse, _ = run(ReusePolicy(anchors))
    assert [g for _, g, _, _ in stats.per_step] == ["full", "head", "predictor", "full", "head", "predictor"]
    assert {g: c for g, (c, _) in stats.graphs.items()} == {"full": 2, "head": 2, "predictor": 2}
    assert {g: c for g, (c, _) in pure_stats.graphs.items()} == {"full": 2, "predictor": 4}
    np.testing.assert_array_equal(every, reuse)  # reuse on every gap is the reuse policy
    assert not np.allclose(mixed, pure) and not np.allclose(mixed, reuse)


def test_gap_errors_compare_both_estimates_with_the_full_dits_velocity(tiny_model):
    cfg, dit, predictor = tiny_model
    cal, steps, shift = _random_set(cfg), 5, 3.0
    with TorchBackend.from_modules(dit, predictor) as backend:
        errors = gap_errors(backend, cal, steps=steps, shift=shift, batch=2)
        # An independent reference for gap 1: the sampler's own all-full runs, recorded.
        rec = RecordingBackend(backend)
        with rec:
            for i in range(len(cal)):
                denoise(rec, cal.noise[i : i + 1], cal.texts[i][None], steps=steps, shift=shift, policy=FullPolicy())
        sig = sigmas(steps, shift).astype(np.float32)
        expected = {(g, name): [] for g in (1, steps - 1) for name in ("predictor", "reuse")}
        for i in range(len(cal)):
            calls = rec.calls["full"][i * steps : (i + 1) * steps]
            outs = [backend.full(*(torch.from_numpy(c[k]) for k in ("latent", "t", "r", "text"))) for c in calls]
            for g in (1, steps - 1):  # the shortest gap, every anchor; the longest, from step 0 to the last
                for a in range(steps - g):
                    s = a + g
                    args = [torch.from_numpy(calls[s][k]) for k in ("latent", "t", "r", "text")] + [outs[a][1]]
                    true = outs[s][0]
                    assert float(calls[s]["t"][0]) == pytest.approx(sig[s])
                    for name, fn in (("predictor", backend.predict), ("reuse", backend.head)):
                        est = fn(*args)
                        expected[g, name].append(float(((est - true) ** 2).mean() / (true**2).mean()))
    assert [e["gap"] for e in errors] == [1, 2, 3, 4]
    assert [e["pairs"] for e in errors] == [len(cal) * (steps - g) for g in range(1, steps)]
    for (g, name), values in expected.items():
        assert errors[g - 1][name] == pytest.approx(np.mean(values), rel=1e-4)
    assert all(np.isfinite([e["predictor"], e["reuse"]]).all() and e["reuse"] > 0 for e in errors)


def test_an_untrained_residual_predictor_measures_as_reuse(tiny_model):
    """The residual predictor starts as plain reuse: both estimates, and so both errors, are the same."""
    cfg = dataclasses.replace(tiny_model[0], predictor=PredictorConfig(depth=0, residual=True))
    dit, predictor = build(cfg)
    randomize_(dit, 0)
    predictor.initialize_weights()
    with TorchBackend.from_modules(dit.eval(), predictor.eval()) as backend:
        errors = gap_errors(backend, _random_set(cfg, n=2), steps=4, shift=3.0)
    for e in errors:
        assert e["predictor"] == pytest.approx(e["reuse"], rel=1e-5)
    record = cached_steps_record(errors, steps=4, shift=3.0, samples=2)
    assert record["steps"] == 4 and len(record["errors"]) == 3


def test_record_reuses_where_reuse_is_closer():
    errors = [
        {"gap": 1, "predictor": 0.02, "reuse": 0.01, "pairs": 8},
        {"gap": 2, "predictor": 0.01, "reuse": 0.03, "pairs": 6},
        {"gap": 3, "predictor": 0.05, "reuse": 0.04, "pairs": 4},
    ]
    record = cached_steps_record(errors, steps=4, shift=3.0, samples=2)
    assert record["reuse_gaps"] == [1, 3]
    assert calibrated_reuse_gaps({"cached_steps": record}, 4) == [1, 3]
    assert calibrated_reuse_gaps({"cached_steps": record}, 20) == []  # calibrated for another step count
    assert calibrated_reuse_gaps({"cached_steps": record}, 4, 3.0) == [1, 3]
    assert calibrated_reuse_gaps({"cached_steps": record}, 4, 5.0) == []  # ... or another shift
    assert calibrated_reuse_gaps({}, 4) == []
    # with TaylorSeer-1's error too: each gap runs the closest of the three
    errors[0]["taylor"], errors[1]["taylor"], errors[2]["taylor"] = 0.005, 0.02, 0.045
    record = cached_steps_record(errors, steps=4, shift=3.0, samples=2)
    assert (record["reuse_gaps"], record["taylor_gaps"]) == ([3], [1])
    assert calibrated_taylor_gaps({"cached_steps": record}, 4) == [1] and calibrated_taylor_gaps({}, 4) == []


def test_choice_on_runs_keeps_what_the_runs_prefer():
    """From the one-step choice, each gap the lists take tries the other estimates and keeps what raises the
    runs' mean PSNR; gaps no list takes keep their one-step choice."""
    errors = [{"gap": g, "predictor": 0.01, "reuse": 0.02, "taylor": 0.03, "pairs": 4} for g in (1, 2, 3, 4)]
    lists = [[0, 2], [0, 1, 3]]  # 5 steps: gaps 1, 2, 3 ([0, 2]: 1, 1, 2; [0, 1, 3]: 1, 1)
    assert cached_gaps([0, 2], 5) == {1, 2} and cached_gaps([0, 1, 3], 5) == {1} and cached_gaps([0], 5) == {1, 2, 3, 4}
    calls = []

    def quality(anchors, reuse, taylor):  # runs that prefer TaylorSeer at gap 1 and reuse at gap 2
        calls.append((tuple(anchors), tuple(reuse), tuple(taylor)))
        return 30.0 + (1 in taylor) + 0.5 * (2 in reuse) + 0.005 * (1 in reuse)

    choice, trials = choose_on_runs(quality, errors, lists, steps=5)
    assert choice == {1: "taylor", 2: "reuse", 3: "predictor", 4: "predictor"}
    assert trials[0] == {"gap": None, "estimate": "one-step choice", "psnr_db": 30.0}
    assert [(t["gap"], t["estimate"]) for t in trials[1:]] == [(1, "reuse"), (1, "taylor"), (2, "reuse"), (2, "taylor")]
    assert trials[1]["psnr_db"] == pytest.approx(30.005)  # reuse at gap 1: +0.005 dB, under the 0.01 dB bar
    assert trials[-1]["psnr_db"] == pytest.approx(31.0)  # TaylorSeer at gap 2 instead of reuse: lower
    # each trial reruns only the lists that take its gap: the one-step choice 2 runs, gap-1 trials 2 each,
    # gap-2 trials 1 each ([0, 2] only)
    assert len(calls) == 2 + 2 * 2 + 2 * 1
    # the training-free control chooses between reuse and TaylorSeer only, from the closer one-step estimate
    control = choose_on_runs(quality, errors, lists, steps=5, options=("reuse", "taylor"))
    assert control[0] == {1: "taylor", 2: "reuse", 3: "reuse", 4: "reuse"}
    assert [(t["gap"], t["estimate"]) for t in control[1][1:]] == [(1, "taylor"), (2, "taylor")]
    record = cached_steps_record(errors, steps=5, shift=3.0, samples=2, choice=choice, trials=trials, control=control)
    assert (record["reuse_gaps"], record["taylor_gaps"], record["chosen_on"]) == ([2], [1], "runs")
    assert record["forecast_reuse_gaps"] == [2, 3, 4] and record["forecast_trials"] == control[1]


def test_disca_runs_taylorseer_on_its_taylor_gaps(tiny_model):
    """On a Taylor gap DisCa's cached step is TaylorSeer-1's (same anchors), elsewhere the predictor's."""
    cfg, dit, predictor = tiny_model
    cal = _random_set(cfg, n=1)
    anchors, steps = [0, 2, 3], 6  # gap 1 at steps 1 and 4 (Taylor: the forecast from anchors 2 and 3 at 4)
    with TorchBackend.from_modules(dit, predictor) as backend:
        runs = {
            name: denoise(backend, cal.noise, cal.texts, steps=steps, shift=3.0, policy=policy)
            for name, policy in (
                ("disca", DiscaPolicy(anchors, taylor_gaps=[1, 2])),
                ("taylor", make_policy("taylorseer1", anchors)),
                ("predictor", DiscaPolicy(anchors)),
            )
        }
    graphs = [g for _, g, *_ in runs["disca"][1].per_step]
    assert graphs == ["full", "head", "full", "full", "head", "head"]
    np.testing.assert_allclose(runs["disca"][0], runs["taylor"][0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(runs["disca"][0], runs["predictor"][0], atol=1e-4)


def test_schedule_cli_stores_the_gap_choice_and_the_runtime_uses_it(bundle_copy, prompt_file, tmp_path):
    args = ["schedule", bundle_copy, "--steps", "4", "--prompts", prompt_file, "--samples", "2"]
    result = invoke(export_cli, [*args, "--report", tmp_path / "rep", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    manifest = Bundle.open(bundle_copy).manifest
    assert manifest["cached_steps"] == out["cached_steps"]
    assert [e["gap"] for e in out["cached_steps"]["errors"]] == [1, 2, 3]
    assert manifest["anchor_lists"]["reuse_gaps"] == manifest["cached_steps"]["reuse_gaps"]
    assert "velocity rel. MSE, predictor" in (tmp_path / "rep" / "schedule_search.md").read_text()
    assert out["cached_steps"]["chosen_on"] == "one-step" and "trials" not in out["cached_steps"]

    # --on-runs: the choice redone on DisCa runs over the searched list of 3 anchors (the budget the bench spans
    # below 4 steps); the stored gaps score at least as well there as the one-step choice it started from
    result = invoke(export_cli, [*args, "--on-runs", "--report", tmp_path / "rep3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    record, lists = out["cached_steps"], [out["curve"][2]["anchors"]]
    assert Bundle.open(bundle_copy).manifest["cached_steps"] == record
    assert record["chosen_on"] == "runs" and record["trials"][0]["estimate"] == "one-step choice"
    b = Bundle.open(bundle_copy)
    cal = calibration_set(b, read_prompts(prompt_file), n=2)
    with OnnxRuntimeBackend(b) as backend:
        ref = sample_all(backend, cal, steps=4, shift=b.schedule.shift)
        kw = dict(steps=4, shift=b.schedule.shift, reuse_gaps=record["reuse_gaps"], taylor_gaps=record["taylor_gaps"])
        chosen = np.mean([psnr(sample_all(backend, cal, anchors=a, **kw), ref) for a in lists])
        # and the training-free control's (TaylorSeer-1 off its reuse gaps), the same way
        dbs = []
        for anchors in lists:
            out = np.empty_like(ref)
            for idx, latents, texts in cal.batches():
                policy = make_policy("taylorseer1-gaps", anchors, forecast_reuse_gaps=record["forecast_reuse_gaps"])
                out[idx] = denoise(backend, latents, texts, steps=4, shift=b.schedule.shift, policy=policy)[0]
            dbs.append(psnr(out, ref))
    assert chosen == pytest.approx(max(t["psnr_db"] for t in record["trials"]), abs=2e-3)
    assert chosen >= record["trials"][0]["psnr_db"] - 1e-3
    assert np.mean(dbs) == pytest.approx(max(t["psnr_db"] for t in record["forecast_trials"]), abs=2e-3)
    # with --gaps-only, over the lists the bundle stores; without stored lists for these steps: one line
    gaps_only = invoke(export_cli, [*args, "--on-runs", "--gaps-only", "--no-write", "--json"])
    assert json.loads(gaps_only.stdout)["trials"] == record["trials"], gaps_only.output
    line = error_line(invoke(export_cli, [*args[:3], "3", *args[4:], "--on-runs", "--gaps-only", "--no-write"]))
    assert "needs the bundle's searched lists for 3 steps" in line

    # The runtime runs whatever the manifest says: here, reuse on one-step gaps.
    manifest["cached_steps"]["reuse_gaps"] = [1]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    run = invoke(run_cli, [bundle_copy, "--prompt", "a red circle", "--steps", "4", "--schedule", "0", "--json"])
    assert run.exit_code == 0, run.output
    stats = json.loads(run.output)
    assert [stats[f"{g}_calls"] for g in ("full", "predictor", "head", "first", "cached")] == [1, 2, 1, 0, 3]
    # the paper's DisCa, the predictor on every cached step, stays one option away
    args_pure = [bundle_copy, "--prompt", "a red circle", "--steps", "4", "--schedule", "0", "--json"]
    pure = json.loads(invoke(run_cli, [*args_pure, "--policy", "disca-predictor"]).output)
    assert pure["policy"] == "disca-predictor" and pure["predictor_calls"] == pure["cached_calls"] == 3
    with Pipeline.load(bundle_copy) as pipe:
        assert pipe.generate("a red circle", steps=6, anchors=[0, 3]).stats.graphs.keys() == {"full", "predictor"}

    # --predictor-only drops the fallback
    result = invoke(export_cli, [*args, "--predictor-only", "--report", tmp_path / "rep2", "--json"])
    assert result.exit_code == 0, result.output
    manifest = Bundle.open(bundle_copy).manifest
    assert "cached_steps" not in manifest and manifest["anchor_lists"]["reuse_gaps"] == []
    assert json.loads(result.stdout)["cached_steps"] is None


def test_calibration_set_gap_errors_on_onnxruntime(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    cal = calibration_set(b, PROMPTS, n=2)
    with OnnxRuntimeBackend(b) as backend:
        errors = gap_errors(backend, cal, steps=3, shift=3.0)
    assert [e["pairs"] for e in errors] == [4, 2]


def test_bench_runs_disca_with_the_fallback_and_keeps_each_policys_clips_apart(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["cached_steps"] = {"steps": 20, "reuse_gaps": [1]}
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    b = Bundle.open(bundle_copy)
    cal = calibration_set(b, PROMPTS, n=2)
    report = run_benchmark(bundle_copy, cal, policies=("disca", "reuse"), budgets=(8,))
    assert report["disca_reuse_gaps"] == [1]
    rows = {r["policy"]: r for r in report["rows"]}
    # default list [0, 1, 2, 5, 9, 13, 17, 19]: one step after an anchor at 3, 6, 10, 14, 18
    assert rows["disca"]["passes"] == {"full": 8, "head": 5, "predictor": 7}
    # the clip-by-clip bench gives each policy its own outputs: the same PSNR as runs made one policy at a time
    with OnnxRuntimeBackend(b) as backend:
        ref = sample_all(backend, cal, steps=20, shift=b.schedule.shift, batch=1)
        for name, gaps in (("disca", [1]), ("reuse", None)):
            outs = []
            for i in range(len(cal)):
                policy = DiscaPolicy(b.schedule.anchors, gaps) if gaps else ReusePolicy(b.schedule.anchors)
                args = (cal.noise[i : i + 1], cal.texts[i][None])
                outs.append(denoise(backend, *args, steps=20, shift=b.schedule.shift, policy=policy)[0][0])
            assert rows[name]["psnr_db"] == pytest.approx(psnr(np.stack(outs), ref), abs=1e-3)


def test_schedule_cli_needs_the_head_graph_unless_predictor_only(bundle_copy, prompt_file, tmp_path):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["graphs"]["head"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    args = ["schedule", bundle_copy, "--steps", "3", "--prompts", prompt_file, "--samples", "1"]
    line = error_line(invoke(export_cli, [*args, "--report", tmp_path / "rep"]))
    assert "has no head graph" in line and "--predictor-only" in line
    assert "cached_steps" not in json.loads((bundle_copy / "manifest.json").read_text())
    assert invoke(export_cli, [*args, "--predictor-only", "--report", tmp_path / "rep"]).exit_code == 0
    assert "is not in the range" in error_line(invoke(export_cli, [*args[:4], "--samples", "0"]))


def test_tensorrt_build_adds_the_head_engine_when_disca_reuses():
    assert default_graphs({"cached_steps": {"steps": 20, "reuse_gaps": [1]}}) == ["full", "predictor", "head"]
    assert default_graphs({"cached_steps": {"steps": 20, "reuse_gaps": []}}) == ["full", "predictor"]
    assert default_graphs({}) == ["full", "predictor"]


def test_taylorseer1_gaps_is_taylorseer_off_its_reuse_gaps_and_reuse_on_them(tiny_model):
    """The training-free control of DisCa's per-gap choice: TaylorSeer-1's cached steps except on its reuse
    gaps, where the anchor's cache goes through the head unchanged."""
    cfg, dit, predictor = tiny_model
    cal = _random_set(cfg, n=1)
    anchors, steps = [0, 2, 3], 6  # cached: step 1 (gap 1), 4 (gap 1), 5 (gap 2)

    def run(policy):
        return denoise(backend, cal.noise, cal.texts, steps=steps, shift=3.0, policy=policy)

    with TorchBackend.from_modules(dit, predictor) as backend:
        taylor, reuse = run(make_policy("taylorseer1", anchors)), run(make_policy("reuse", anchors))
        none = run(make_policy("taylorseer1-gaps", anchors))
        every = run(make_policy("taylorseer1-gaps", anchors, forecast_reuse_gaps=[1, 2]))
        gap2 = run(make_policy("taylorseer1-gaps", anchors, forecast_reuse_gaps=[2]))
    np.testing.assert_allclose(none[0], taylor[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(every[0], reuse[0], rtol=1e-5, atol=1e-6)
    assert [g for _, g, *_ in gap2[1].per_step] == ["full", "head", "full", "full", "head", "head"]
    assert not np.allclose(gap2[0], taylor[0], atol=1e-5) and not np.allclose(gap2[0], reuse[0], atol=1e-5)


def test_forecast_reuse_gaps_come_from_the_calibrations_errors():
    """Reuse where the cache was closer than TaylorSeer-1's forecast; the predictor's error plays no part."""
    errors = [
        {"gap": 1, "predictor": 0.9, "reuse": 0.004, "taylor": 0.002},
        {"gap": 2, "predictor": 0.001, "reuse": 0.01, "taylor": 0.02},
        {"gap": 3, "predictor": 0.001, "reuse": 0.01},  # an older record without the forecast's error
    ]
    manifest = {"cached_steps": {"steps": 20, "shift": 5.0, "reuse_gaps": [1], "errors": errors}}
    assert calibrated_forecast_reuse_gaps(manifest, 20, 5.0) == [2]
    assert calibrated_forecast_reuse_gaps(manifest, 10, 5.0) == [] and calibrated_forecast_reuse_gaps({}, 20) == []
    manifest["cached_steps"]["forecast_reuse_gaps"] = [1, 3]  # chosen on sampled runs: that choice holds
    assert calibrated_forecast_reuse_gaps(manifest, 20, 5.0) == [1, 3]
