"""Training-free cache policies (reuse, TaylorSeer) through the head graph, and `disca-bench`."""

import json

import numpy as np
import pytest
import torch

from disca.benchmark import anchor_list, markdown, plot, run_benchmark
from disca.bundle import Bundle
from disca.calibration.dataset import calibration_set
from disca.cli.bench import main as bench_cli
from disca.errors import DiscaError, ScheduleError
from disca.models.graphs import FullGraph, HeadGraph
from disca.runtime import Pipeline
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.schedule import ReusePolicy, TaylorSeerPolicy, make_policy
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

        for order in (1, 2):
            policy = TaylorSeerPolicy([0], order=order)
            policy.reset(4)
            for s, c in zip(sig, caches):
                policy.observe(backend, 0, s, c)
            # Reference: Lagrange's form of the same polynomial through the last order+1 anchors.
            pts = list(zip(sig, caches))[-(order + 1) :]
            expected = sum(
                c.double() * np.prod([(0.35 - sj) / (si - sj) for j, (sj, _) in enumerate(pts) if j != i])
                for i, (si, c) in enumerate(pts)
            ).float()
            got = policy.cached_velocity(backend, 3, 0.35, x, t, r, text, caches[-1])
            torch.testing.assert_close(got, HeadGraph(dit)(x, t, r, text, expected), rtol=1e-4, atol=1e-5)


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
            assert (stats.full_calls, stats.predictor_calls) == (3, 3) and np.isfinite(out).all()
            assert stats.cached_graph == ("predictor" if name == "disca" else "head")
            same, _ = pipe.denoise(latent, text, steps=6, anchors=list(range(6)), policy=name)
            np.testing.assert_allclose(same, full, rtol=1e-5, atol=1e-6)


def test_bundle_without_head_graph_is_a_clear_error(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["graphs"]["head"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with Pipeline.load(bundle_copy) as pipe:
        with pytest.raises(DiscaError, match="has no fp32 head graph"):
            pipe.denoise(np.zeros((1, 3, 2, 8, 8)), np.zeros((1, 4, 16)), steps=4, anchors=[0, 2], policy="reuse")


def test_benchmark_rows_tables_and_plot(tiny_bundle, tmp_path):
    b = Bundle.open(tiny_bundle)
    assert anchor_list(b, 20, 8) == b.schedule.anchors and anchor_list(b, 20, 4) == [0, 5, 10, 15]
    cal = calibration_set(b, ["a red circle"], n=2)
    report = run_benchmark(tiny_bundle, cal, policies=("disca", "reuse", "taylorseer1"), budgets=(8, 4))
    rows = report["rows"]
    assert [(r["policy"], r["anchors"]) for r in rows][:2] == [("full", 20), ("disca", 8)] and len(rows) == 7
    for r in rows[1:]:
        cached = "predictor" if r["policy"] == "disca" else "head"
        assert r["passes"] == {"full": r["anchors"], cached: 20 - r["anchors"]}
        assert np.isfinite(r["psnr_db"]) and 0 < r["ssim"] <= 1 and r["speedup_vs_full"] > 0
    assert "| reuse | 4 | 4 full, 16 head |" in markdown(report)
    plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_bench_cli_errors(tiny_bundle):
    assert "unknown policy 'fora'" in error_line(invoke(bench_cli, [tiny_bundle, "--policies", "disca,fora"]))
    assert "anchor counts" in error_line(invoke(bench_cli, [tiny_bundle, "--anchors", "8,x"]))
    line = error_line(invoke(bench_cli, [tiny_bundle, "--samples", "2"]))
    assert "pass --prompts FILE" in line
