"""Training-free cache policies (reuse, TaylorSeer, TeaCache, First-Block-Cache) through the head and probe graphs,
and `disca-bench`."""

import json

import numpy as np
import pytest
import torch

from disca.benchmark import margin_intervals, margins, margins_markdown, markdown, plot, report_json, run_benchmark
from disca.bundle import Bundle
from disca.calibration.dataset import calibration_set
from disca.calibration.teacache import change_pairs, fit_teacache
from disca.cli.bench import main as bench_cli
from disca.cli.export import main as export_cli
from disca.cli.run import main as run_cli
from disca.errors import DiscaError, ScheduleError
from disca.models.graphs import FirstBlockGraph, FullGraph, HeadGraph, RestGraph, TailGraph
from disca.runtime import DiscaPolicy, FullPolicy, Pipeline
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import (
    DBCachePolicy,
    FirstBlockPolicy,
    ReusePolicy,
    TaylorForecast,
    TaylorSeerPolicy,
    budget_anchors,
    make_policy,
    rel_l1,
)
from tests.test_cli import error_line, invoke


def _inputs(cfg, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.dit.in_channels, 2, 8, 8, generator=g)
    text = torch.randn(batch, 4, cfg.dit.text_dim, generator=g)
    return x, text


def test_head_graph_is_the_dits_head(tiny_model):
    """On the trunk's own hidden state, the head graph gives the full graph's velocity."""
    cfg, dit, _ = tiny_model
    x, text = _inputs(cfg)
    t, r = torch.tensor([0.7]), torch.tensor([0.6])
    with torch.no_grad():
        velocity, hidden = FullGraph(dit)(x, t, r, text)
        torch.testing.assert_close(HeadGraph(dit)(x, t, r, text, hidden), velocity, rtol=1e-5, atol=1e-6)


def test_reuse_and_taylorseer_cached_steps(tiny_model):
    cfg, dit, predictor = tiny_model
    x, text = _inputs(cfg)
    sig = [0.9, 0.7, 0.5]
    with TorchBackend.from_modules(dit, predictor) as backend:
        caches = [backend.full(x, torch.tensor([s]), torch.tensor([s - 0.1]), text)[1] for s in sig]
        t, r = torch.tensor([0.35]), torch.tensor([0.25])

        reuse = ReusePolicy([0])
        reuse.reset(4)
        got = reuse.cached_velocity(backend, 3, 0.35, x, t, r, text, caches[-1])
        torch.testing.assert_close(got, HeadGraph(dit)(x, t, r, text, caches[-1]))

        steps = [0, 1, 3]  # full steps; the forecast is read at step 4
        for order in (1, 2):
            policy = TaylorSeerPolicy([0], order=order)
            policy.reset(5)
            for step, s, c in zip(steps, sig, caches):
                policy.observe(backend, step, s, c)
            # TaylorSeer's recursion in step index, written out: windows 1 then 2, forecast 1 step on.
            c0, c1, c2 = (c.double() for c in caches)
            d1, d1_prev = (c2 - c1) / 2, (c1 - c0) / 1
            expected = c2 + d1 * 1 + (((d1 - d1_prev) / 2) * 1**2 / 2 if order == 2 else 0)
            got = policy.cached_velocity(backend, 4, 0.35, x, t, r, text, caches[-1])
            torch.testing.assert_close(got, HeadGraph(dit)(x, t, r, text, expected.float()), rtol=1e-4, atol=1e-5)


def test_taylor_forecast_follows_taylorseer_in_step_index():
    """Lines are extrapolated exactly at orders 1 and 2; a parabola by TaylorSeer's backward differences
    (not Newton's exact interpolation: the published recursion treats them as derivatives at the last step)."""
    line = lambda k: 3.0 - 0.5 * k  # noqa: E731
    for order in (1, 2):
        forecast = TaylorForecast(order)
        for k in (0, 2, 4):
            forecast.update(k, np.array([line(k)]))
        np.testing.assert_allclose([forecast(5), forecast(7)], [[line(5)], [line(7)]], rtol=1e-12)
    forecast = TaylorForecast(2)
    for k, value in ((0, 1.0), (2, 4.0), (4, 5.0)):  # 1 + 2k - k^2/4
        forecast.update(k, np.array([value]))
    # dY1 = (5 - 4) / 2 = 0.5, its previous (4 - 1) / 2 = 1.5, dY2 = (0.5 - 1.5) / 2 = -0.5
    np.testing.assert_allclose(forecast(5), [5.0 + 0.5 * 1 - 0.5 * 1 / 2])
    forecast = TaylorForecast(2)
    forecast.update(3, np.array([7.0]))
    assert forecast(5) == 7.0  # one full step so far: plain reuse
    with pytest.raises(ScheduleError, match="order must be 1 or 2"):
        TaylorForecast(3)


def test_policy_names_and_errors():
    assert make_policy("taylorseer2", [0, 2]).name == "taylorseer2"
    assert make_policy("reuse", [0]).cached_graph == "head"
    assert make_policy("disca", [0]).cached_graph == "predictor"
    with pytest.raises(ScheduleError, match="unknown policy 'fora'"):
        make_policy("fora")


def test_every_policy_runs_on_onnxruntime_and_all_anchors_is_all_full(tiny_bundle):
    rng = np.random.default_rng(0)
    with Pipeline.load(tiny_bundle) as pipe:
        latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
        text = rng.standard_normal((1, 4, 16)).astype(np.float32)
        full, _ = pipe.denoise(latent, text, steps=6, anchors="full")
        for name in ("disca", "reuse", "taylorseer1", "taylorseer2"):
            out, stats = pipe.denoise(latent, text, steps=6, anchors=[0, 2, 4], policy=name)
            assert (stats.full_calls, stats.cached_calls) == (3, 3) and np.isfinite(out).all()
            cached = "predictor" if name == "disca" else "head"  # what the cached steps ran, counted as such
            assert (stats.predictor_calls, stats.head_calls) == ((3, 0) if cached == "predictor" else (0, 3))
            same, _ = pipe.denoise(latent, text, steps=6, anchors=list(range(6)), policy=name)
            np.testing.assert_allclose(same, full, rtol=1e-5, atol=1e-6)


def test_bundle_without_head_graph_is_a_clear_error(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["graphs"]["head"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with Pipeline.load(bundle_copy) as pipe:
        with pytest.raises(DiscaError, match="has no fp32 head graph"):
            pipe.denoise(np.zeros((1, 3, 2, 8, 8)), np.zeros((1, 4, 16)), steps=4, anchors=[0, 2], policy="reuse")


def test_pipeline_takes_an_anchor_budget(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe:
        result = pipe.generate("a red circle", steps=20, anchors=4)
    assert result.anchors == [0, 5, 10, 15] and result.stats.full_calls == 4  # no searched list: uniform


def test_benchmark_rows_tables_and_plot(tiny_bundle, tmp_path):
    b = Bundle.open(tiny_bundle)
    assert budget_anchors(b.manifest, 20, 8) == (b.schedule.anchors, "default")
    assert budget_anchors(b.manifest, 20, 4) == ([0, 5, 10, 15], "uniform")
    assert budget_anchors(b.manifest, 20, 10) == ([0, 1, 2, 5, 9, 11, 13, 15, 17, 19], "official")
    searched = {**b.manifest, "anchor_lists": {"steps": 20, "lists": {"4": [0, 3, 9, 19]}}}
    assert budget_anchors(searched, 20, 4) == ([0, 3, 9, 19], "searched")
    assert budget_anchors(searched, 10, 4) == ([0, 2, 5, 8], "uniform")  # searched for 20 steps, not 10
    with pytest.raises(ScheduleError, match="between 1 and 20"):
        budget_anchors(b.manifest, 20, 21)
    cal = calibration_set(b, ["a red circle"], n=2)
    report = run_benchmark(tiny_bundle, cal, policies=("disca", "reuse", "taylorseer1"), budgets=(8, 4))
    rows = report["rows"]
    assert [(r["policy"], r["anchors"]) for r in rows][:2] == [("full", 20), ("disca", 8)] and len(rows) == 7
    for r in rows[1:]:
        cached = "predictor" if r["policy"] == "disca" else "head"
        assert r["passes"] == {"full": r["anchors"], cached: 20 - r["anchors"]}
        assert np.isfinite(r["psnr_db"]) and 0 < r["ssim"] <= 1 and r["speedup_vs_full"] > 0
    assert "| reuse | 4 anchors (uniform) | 4 full, 16 head |" in markdown(report)
    # DisCa's margin at each speedup: the best row of each family among those at least that fast
    fastest_disca = max(r["speedup_vs_full"] for r in rows if r["policy"] == "disca")
    for m in margins(report, speeds=(0.0, fastest_disca)):
        fast = [r for r in rows[1:] if r["speedup_vs_full"] >= m["speedup"]]
        best = max(r["psnr_db"] for r in fast if r["policy"] != "disca")
        assert m["training_free"]["psnr_db"] == best and m["disca"]["policy"] == "disca"
        assert m["margin_db"] == round(m["disca"]["psnr_db"] - best, 2)
    assert "| speedup >= | best DisCa | best training-free | margin (dB) | 90% interval" in markdown(report)
    # the per-clip records behind the margins' intervals give back each row's figures
    for r in rows:
        assert len(r["clip_ms"]) == len(cal) and np.mean(r["clip_ms"]) == pytest.approx(r["ms_per_clip"], abs=1e-3)
        if r["policy"] != "full":
            assert 10 * np.log10(4 / np.mean(r["clip_mse"])) == pytest.approx(r["psnr_db"], abs=2e-3)
    text = report_json(report)  # bench.json: the same report, each number list on one line
    assert json.loads(text) == report and f'"clip_ms": {json.dumps(rows[0]["clip_ms"])}' in text
    report["rows"].append({**rows[-1], "psnr_db": 1.0})  # two runs at the same speedup still plot
    plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def _row(policy, clip_ms, clip_mse=None, full_ms=10.0):
    row = {"policy": policy, "anchors": 8, "clip_ms": clip_ms, "ms_per_clip": float(np.mean(clip_ms))}
    row["speedup_vs_full"] = round(full_ms / row["ms_per_clip"], 3)
    if clip_mse is not None:
        row |= {"clip_mse": clip_mse, "psnr_db": round(10 * np.log10(4 / np.mean(clip_mse)), 3)}
    return row


def test_margin_intervals_resample_the_clips():
    """The bootstrap of `margins`: identical clips leave nothing to resample (the interval is the margin
    itself); clips that differ spread it around the margin; a row too slow for a speed never counts there."""
    full = _row("full", [10.0] * 4)
    same = {"rows": [full, _row("disca", [5.0] * 4, [1e-3] * 4), _row("reuse", [4.0] * 4, [4e-3] * 4)]}
    (point_14, point_22), (iv_14, iv_22) = margins(same, speeds=(1.4, 2.2)), margin_intervals(same, speeds=(1.4, 2.2))
    assert point_14["margin_db"] == pytest.approx(6.02, abs=0.01) and point_22["disca"] is None
    assert iv_14["low"] == iv_14["high"] == pytest.approx(point_14["margin_db"], abs=0.01)
    assert iv_14["chance_target"] == 1.0 and iv_22 == {"speedup": 2.2, "low": None, "high": None, "chance_target": None}
    # one clip of four worse for DisCa: the draws that repeat it lead by less than 1 dB (about a quarter of
    # them: two or more copies), those without it by more
    varied = {"rows": [full, _row("disca", [5.0] * 4, [1e-3, 1e-3, 1e-3, 6e-3]), _row("reuse", [4.0] * 4, [4e-3] * 4)]}
    point, iv = margins(varied, speeds=(1.4,))[0], margin_intervals(varied, speeds=(1.4,))[0]
    assert iv["low"] < 1 < point["margin_db"] < iv["high"] and 0.65 < iv["chance_target"] < 0.85
    assert margin_intervals(varied, speeds=(1.4,), seed=3) == margin_intervals(varied, speeds=(1.4,), seed=3)
    # times resampled too: a row exactly as fast as the bin on average (4 and 6 ms clips, 2.0x) is in it in
    # the draws with at most two 6 ms clips of four, 11/16 of them
    timed = {"rows": [full, _row("disca", [4.0, 6.0, 4.0, 6.0], [1e-3] * 4), _row("reuse", [4.0] * 4, [4e-3] * 4)]}
    assert margin_intervals(timed, speeds=(2.0,))[0]["chance_target"] == pytest.approx(11 / 16, abs=0.04)
    # a report without per-clip records (older bench.json): no intervals, the table as before
    for r in same["rows"]:
        del r["clip_ms"]
    assert margin_intervals(same) is None
    assert "| margin (dB) |\n|---|---|---|---|\n" in margins_markdown(same)


def test_benchmark_rotated_order_keeps_each_policys_outputs(tiny_bundle):
    """Clip i starts the turn at policy i: every row still holds its own policy's outputs, clip by clip (the
    outputs are deterministic, so each equals a run of that policy alone)."""
    from disca.benchmark import _run_all

    b = Bundle.open(tiny_bundle)
    cal = calibration_set(b, ["a red circle", "a blue square"], n=3)
    factories = [FullPolicy, lambda: DiscaPolicy([0, 3]), lambda: ReusePolicy([0, 2, 4])]
    with OnnxRuntimeBackend(b) as be:
        results = _run_all(be, cal, factories, 6, 3.0, log=lambda m: None)
        for (outs, clip_ms, _passes), factory in zip(results, factories):
            assert clip_ms.shape == (len(cal),) and (clip_ms > 0).all()
            for i in range(len(cal)):
                alone, _ = denoise(be, cal.noise[i : i + 1], cal.texts[i][None], steps=6, shift=3.0, policy=factory())
                np.testing.assert_array_equal(outs[i], alone[0])
    assert [p["full"] for _, _, p in results] == [6, 2, 3]


def test_bench_cli_errors(tiny_bundle):
    assert "unknown policy 'fora'" in error_line(invoke(bench_cli, [tiny_bundle, "--policies", "disca,fora"]))
    assert "--anchors: expected comma-separated positive" in error_line(
        invoke(bench_cli, [tiny_bundle, "--anchors", "8,x"])
    )
    assert "--teacache" in error_line(invoke(bench_cli, [tiny_bundle, "--teacache", "0.1,-1"]))
    line = error_line(invoke(bench_cli, [tiny_bundle, "--samples", "2"]))
    assert "pass --prompts FILE" in line
    # what would run nothing, run a row twice, or be ignored is refused before any run
    for args, message in [
        (["--policies", ""], "expected distinct policy names"),
        (["--policies", "disca,reuse,disca"], "expected distinct policy names"),
        (["--policies", "full"], "unknown policy 'full'"),  # the reference of every row, not a row
        (["--anchors", "8,8"], "expected distinct anchor budgets"),
        (["--lists", "searched,searched"], "--lists"),
        (["--policies", "disca", "--teacache", "0.5"], "--teacache sets teacache's thresholds"),
        (["--policies", "disca", "--dbcache", "0.2/2"], "--dbcache sets the DBCache policies' settings"),
        (["--backend", "torch", "--threads", "2"], "--threads is for --backend onnxruntime"),
    ]:
        assert message in error_line(invoke(bench_cli, [tiny_bundle, *args])), args


# ---------------------------------------------------------------- threshold caches (probe graph)


def test_first_block_graph_is_the_dits_embed_and_block_0(tiny_model):
    cfg, dit, _ = tiny_model
    x, text = _inputs(cfg)
    t, r = torch.tensor([0.7]), torch.tensor([0.6])
    with torch.no_grad():
        tokens, modulated, first, probe_vec = FirstBlockGraph(dit)(x, t, r, text)
        ref_tokens, vec, rope = dit.embed(x, t, r, text)
        torch.testing.assert_close(probe_vec, vec)
        torch.testing.assert_close(tokens, ref_tokens)
        torch.testing.assert_close(first, dit.blocks[0](ref_tokens, vec, rope))
        # the rest of the trunk on block 0's output is the full graph's hidden state
        rest = first
        for block in dit.blocks[1:]:
            rest = block(rest, vec, rope)
        torch.testing.assert_close(rest, FullGraph(dit)(x, t, r, text)[1])
        assert not torch.allclose(modulated, tokens)


def test_first_block_cached_step_adds_the_cached_residual_to_block_0(tiny_model):
    cfg, dit, predictor = tiny_model
    x, text = _inputs(cfg)
    with TorchBackend.from_modules(dit, predictor) as backend:
        policy = FirstBlockPolicy(threshold=1e9)
        policy.reset(4)
        t0, r0, t1, r1 = (torch.tensor([v]) for v in (0.9, 0.8, 0.8, 0.7))
        probe0 = backend.first(x, t0, r0, text)
        assert policy.is_full(0, probe0)
        _, hidden0 = backend.full(x, t0, r0, text)
        policy.observe(backend, 0, 0.9, hidden0)
        x1 = x * 0.9
        probe1 = backend.first(x1, t1, r1, text)
        assert not policy.is_full(1, probe1)  # huge threshold: skipped
        got = policy.cached_velocity(backend, 1, 0.8, x1, t1, r1, text, hidden0)
        expected = HeadGraph(dit)(x1, t1, r1, text, probe1[2] + (hidden0 - probe0[2]))
        torch.testing.assert_close(got, expected)


def test_threshold_policies_decide_from_the_probe(tiny_bundle):
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((1, 4, 16)).astype(np.float32)
    with Pipeline.load(tiny_bundle) as pipe:
        full, _ = pipe.denoise(latent, text, steps=6, anchors="full")
        for name, skip_all in (("teacache", 2), ("first-block", 1)):
            # a threshold nothing stays under: every step full, the same result as all-full sampling
            out, stats = pipe.denoise(latent, text, steps=6, policy=name, threshold=1e-9)
            assert (stats.full_calls, stats.first_calls) == (6, 6)
            np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)
            # a threshold everything stays under: only the forced full steps
            out, stats = pipe.denoise(latent, text, steps=6, policy=name, threshold=1e9)
            assert (stats.full_calls, stats.head_calls, stats.first_calls) == (skip_all, 6 - skip_all, 6)
            assert stats.predictor_calls == 0 and np.isfinite(out).all()
            assert not np.allclose(out, full, atol=1e-3)
        # in between, ORT and torch take the same decisions
        for backend in ("onnxruntime", "torch"):
            with Pipeline.load(tiny_bundle, backend=backend) as p:
                res = p.generate(text_embeddings=text[0], policy="first-block", threshold=0.05)
                assert res.anchors[0] == 0 and len(res.anchors) == res.stats.full_calls
                if backend == "onnxruntime":
                    ort_anchors = res.anchors
        assert res.anchors == ort_anchors


def test_teacache_fit_is_stored_at_export_and_beats_a_constant(tiny_bundle, tiny_model):
    record = Bundle.open(tiny_bundle).manifest["teacache"]
    assert record["degree"] == 4 and len(record["coefficients"]) == 5 and not record["degenerate"]
    assert record["points"] == record["samples"] * (record["steps"] - 1)
    cfg, dit, predictor = tiny_model
    cal = calibration_set(Bundle.open(tiny_bundle), ["a red circle"], n=2)
    with TorchBackend.from_modules(dit, predictor) as backend:
        xs, ys = change_pairs(backend, cal, steps=8, shift=3.0)
        fit = fit_teacache(backend, cal, steps=8, shift=3.0, degree=2)
    assert xs.shape == ys.shape == (14,) and (xs > 0).all() and (ys > 0).all()
    # least squares over polynomials that include the constants: no worse than the mean, in squared error
    assert np.mean((np.polyval(fit["coefficients"], xs) - ys) ** 2) <= np.mean((ys - ys.mean()) ** 2) + 1e-12
    assert rel_l1(np.ones(3), np.ones(3)) == 0 and rel_l1(2 * np.ones(3), np.ones(3)) == 1


def test_threshold_policy_errors(bundle_copy):
    with pytest.raises(ScheduleError, match="disca-export teacache"):
        make_policy("teacache", threshold=0.1)
    with pytest.raises(ScheduleError, match="threshold > 0"):
        make_policy("first-block", threshold=0)
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["graphs"]["first"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with Pipeline.load(bundle_copy) as pipe:
        with pytest.raises(DiscaError, match="has no fp32 first graph"):
            pipe.denoise(np.zeros((1, 3, 2, 8, 8)), np.zeros((1, 4, 16)), steps=4, policy="first-block")
    assert "no probe graph" in error_line(invoke(export_cli, ["teacache", str(bundle_copy)]))


def test_teacache_and_run_clis(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["teacache"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    np.save(bundle_copy.parent / "text.npy", np.ones((4, 16), np.float32))
    text = ["--text-embeddings", str(bundle_copy.parent / "text.npy")]
    assert "disca-export teacache" in error_line(invoke(run_cli, [str(bundle_copy), *text, "--policy", "teacache"]))
    prompts = bundle_copy.parent / "prompts.txt"
    prompts.write_text("a red circle\nred blue\n")
    result = invoke(export_cli, ["teacache", str(bundle_copy), "--prompts", str(prompts), "--samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["coefficients"]) == 5
    assert len(Bundle.open(bundle_copy).manifest["teacache"]["coefficients"]) == 5
    for policy in ("teacache", "first-block"):
        args = [str(bundle_copy), *text, "--policy", policy]
        result = invoke(run_cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        stats = json.loads(result.output)
        assert stats["first_calls"] == 20 and stats["full_calls"] + stats["cached_calls"] == 20
        assert stats["anchors"][0] == 0 and stats["head_calls"] == stats["cached_calls"]  # skipped steps: the head
        assert stats["predictor_calls"] == 0 and stats["ms_per_predictor"] is None


def test_benchmark_runs_the_threshold_policies(tiny_bundle):
    cal = calibration_set(Bundle.open(tiny_bundle), ["a red circle"], n=1)
    report = run_benchmark(
        tiny_bundle, cal, policies=("teacache", "first-block"), thresholds={"teacache": (1e9,), "first-block": (1e9,)}
    )
    rows = {r["policy"]: r for r in report["rows"]}
    assert rows["teacache"]["passes"] == {"full": 2, "head": 18, "first": 20}
    assert rows["first-block"]["passes"] == {"full": 1, "head": 19, "first": 20}
    assert "| first-block | threshold 1e+09 |" in markdown(report)


def test_adaptive_disca_is_disca_on_the_anchors_it_chose(tiny_bundle):
    """Online anchors from the hidden state's speed between the last two anchors: the run equals DisCa on the
    anchor list it picked, a threshold nothing reaches leaves only the warm-up (and the cap) full."""
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((1, 4, 16)).astype(np.float32)
    with Pipeline.load(tiny_bundle) as pipe:
        picked = {}
        for threshold in (0.05, 0.3, 1e9):
            out, stats = pipe.denoise(latent, text, steps=10, policy="disca-adaptive", threshold=threshold)
            anchors = [s for s, graph, *_ in stats.per_step if graph == "full"]
            same, _ = pipe.denoise(latent, text, steps=10, anchors=anchors, policy="disca")
            np.testing.assert_allclose(out, same, rtol=1e-6, atol=1e-6)
            picked[threshold] = anchors
        assert picked[1e9] == [0, 1]  # the two warm-up steps only
        assert len(picked[0.05]) > len(picked[0.3]) > 2  # a lower threshold: more anchors
    with OnnxRuntimeBackend(Bundle.open(tiny_bundle)) as backend:
        policy = make_policy("disca-adaptive", threshold=1e9, max_cached=3)
        _, stats = denoise(backend, latent, text, steps=10, shift=3.0, policy=policy)
    assert [s for s, graph, *_ in stats.per_step if graph == "full"] == [0, 1, 5, 9]  # at most 3 cached in a row
    with pytest.raises(ScheduleError, match="threshold > 0"):
        make_policy("disca-adaptive", threshold=0.0)


# ---------------------------------------------------------------- DBCache (probe + rest / tail)


def test_probe_plus_rest_is_one_full_pass_and_tail_is_the_head(tiny_model):
    cfg, dit, _ = tiny_model
    x, text = _inputs(cfg, batch=2)
    t, r = torch.tensor([0.7, 0.4]), torch.tensor([0.6, 0.3])
    with torch.no_grad():
        velocity, hidden = FullGraph(dit)(x, t, r, text)
        _, _, first, vec = FirstBlockGraph(dit)(x, t, r, text)
        rest_velocity, rest_hidden = RestGraph(dit)(x, t, text, vec, first)
        torch.testing.assert_close(rest_hidden, hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rest_velocity, velocity, rtol=1e-5, atol=1e-5)
        other = hidden * 0.5 + 0.1
        torch.testing.assert_close(TailGraph(dit)(x, t, vec, other), HeadGraph(dit)(x, t, r, text, other))


def test_dbcache_decisions_and_its_forecast(tiny_bundle):
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((1, 4, 16)).astype(np.float32)
    with Pipeline.load(tiny_bundle) as pipe:
        full, full_stats = pipe.denoise(latent, text, steps=8, anchors="full")
        for name in ("dbcache", "dbcache-ts1", "dbcache-ts2"):
            # nothing under the threshold: every step full, probe + rest = the all-full result
            out, stats = pipe.denoise(latent, text, steps=8, policy=name, threshold=1e-9)
            assert (stats.full_calls, stats.first_calls) == (8, 8)
            np.testing.assert_allclose(out, full, rtol=1e-4, atol=1e-5)
            # everything under it: warm-up (2), then a full step after every 2 cached ones
            out, stats = pipe.denoise(latent, text, steps=8, policy=name, threshold=1e9)
            graphs = [g for _, g, *_ in stats.per_step]
            assert graphs == ["full", "full", "tail", "tail", "full", "tail", "tail", "full"]
            assert np.isfinite(out).all() and not np.allclose(out, full, atol=1e-3)
    policy = make_policy("dbcache-ts1", threshold=1e9, warmup=1, max_cached=None)
    assert isinstance(policy, DBCachePolicy) and (policy.order, policy.max_cached) == (1, None)
    with pytest.raises(ScheduleError, match="max_cached >= 1"):
        make_policy("dbcache", threshold=0.1, max_cached=0)


def test_dbcache_cached_step_adds_the_forecast_residual_to_block_0(tiny_model):
    cfg, dit, predictor = tiny_model
    x, text = _inputs(cfg)
    with TorchBackend.from_modules(dit, predictor) as backend:
        policy = DBCachePolicy(threshold=1e9, order=1, warmup=2, max_cached=None)
        policy.reset(4)
        residuals = []
        for step, (tv, rv) in enumerate(((0.9, 0.8), (0.8, 0.7))):
            xs = x * (1 - 0.1 * step)
            t, r = torch.tensor([tv]), torch.tensor([rv])
            probe = backend.first(xs, t, r, text)
            assert policy.is_full(step, probe)
            _, hidden = policy.full_step(backend, xs, t, r, text, probe)
            torch.testing.assert_close(hidden, backend.full(xs, t, r, text)[1], rtol=1e-5, atol=1e-5)
            policy.observe(backend, step, tv, hidden)
            residuals.append(hidden - probe[2])
        x2, t, r = x * 0.8, torch.tensor([0.7]), torch.tensor([0.6])
        probe = backend.first(x2, t, r, text)
        assert not policy.is_full(2, probe)
        got = policy.cached_velocity(backend, 2, 0.7, x2, t, r, text, None)
        forecast = residuals[1] + (residuals[1] - residuals[0])  # one step on, linear in step index
        torch.testing.assert_close(got, HeadGraph(dit)(x2, t, r, text, probe[2] + forecast), rtol=1e-5, atol=1e-5)


def test_benchmark_runs_dbcache(tiny_bundle):
    cal = calibration_set(Bundle.open(tiny_bundle), ["a red circle"], n=1)
    report = run_benchmark(tiny_bundle, cal, policies=("dbcache-ts1",), dbcache=[(1e9, 3)])
    (row,) = [r for r in report["rows"] if r["policy"] == "dbcache-ts1"]
    assert row["passes"] == {"full": 6, "tail": 14, "first": 20}  # steps 0, 1 (warm-up), then 1 full in 4
    assert "| dbcache-ts1 | no threshold, <= 3 cached in a row, warm-up 2 |" in markdown(report)
    assert "THRESHOLD/CAP" in error_line(invoke(bench_cli, [tiny_bundle, "--dbcache", "0.2"]))


def test_untrained_forecast_predictor_is_taylorseer_order_1(tiny_model):
    """A residual predictor that reads the Taylor forecast starts as exactly that forecast: DisCa with it,
    untrained, gives TaylorSeer-1's run on the same anchors."""
    from disca.models import CachePredictor
    from disca.runtime.sampler import denoise

    cfg, dit, _ = tiny_model
    pcfg = type(cfg.predictor)(depth=1, residual=True, forecast=True)
    predictor = CachePredictor(cfg.dit, pcfg).eval()
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 3, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((1, 4, 16)).astype(np.float32)
    anchors = [0, 1, 3, 4]
    with TorchBackend.from_modules(dit, predictor) as backend:
        assert backend.forecast_input
        outs = [
            denoise(backend, latent, text, steps=6, shift=3.0, policy=make_policy(name, anchors))[0]
            for name in ("disca", "taylorseer1", "reuse")
        ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(outs[0], outs[2], atol=1e-4)  # ... which is not plain reuse
