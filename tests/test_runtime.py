import importlib.util

import numpy as np
import pytest
import torch

from disca.bundle import Bundle
from disca.errors import InputError, NonFiniteError, ScheduleError, ShapeError
from disca.models.graphs import FullGraph, PredictorGraph
from disca.runtime import DiscaPolicy, FullPolicy, Pipeline, check_anchors, sigmas
from disca.runtime.backends import BACKENDS, get_backend
from disca.spec import dummy_inputs

INSTALLED = [b for b in BACKENDS if importlib.util.find_spec({"torch": "torch"}.get(b, b)) is not None]
DIMS = {"batch": 2, "frames": 3, "height": 8, "width": 10, "text_len": 5}


def rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ---------------------------------------------------------------- schedule


def test_sigmas_are_shifted_and_end_at_zero():
    s = sigmas(4, 5.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    assert s[2] == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))


@pytest.mark.parametrize(
    "anchors, message",
    [
        ([1, 2], "step 0 must be an anchor"),
        ([0, 5, 2], "sorted and unique"),
        ([0, 2, 2], "sorted and unique"),
        ([0, 20], "out of range"),
        ([], "empty"),
    ],
)
def test_bad_anchor_schedules(anchors, message):
    with pytest.raises(ScheduleError, match=message):
        check_anchors(anchors, 20)


def test_policies():
    p = DiscaPolicy([0, 3])
    p.reset(5)
    assert [p.is_full(i) for i in range(5)] == [True, False, False, True, False]
    f = FullPolicy()
    f.reset(3)
    assert all(f.is_full(i) for i in range(3))


# ---------------------------------------------------------------- backends


@pytest.mark.parametrize("name", INSTALLED)
def test_backend_conformance(name, tiny_model, tiny_bundle):
    """Every installed backend gives the PyTorch graphs' numbers on the same inputs (rel L2 <= 1e-4)."""
    cfg, dit, predictor = tiny_model
    bundle = Bundle.open(tiny_bundle)
    feeds = dummy_inputs(bundle.specs["full"], DIMS, bundle.patch, seed=3)
    with torch.no_grad():
        args = [torch.from_numpy(v) for v in feeds.values()]
        ref_v, ref_h = FullGraph(dit)(*args)
        ref_p = PredictorGraph(dit, predictor)(*args, ref_h)
    with get_backend(name, bundle) as be:
        x = {k: be.asarray(v) for k, v in feeds.items()}
        v, cache = be.full(x["latent"], x["t"], x["r"], x["text"])
        p = be.predict(x["latent"], x["t"], x["r"], x["text"], cache)
        assert rel_l2(be.to_numpy(v), ref_v) <= 1e-4
        assert rel_l2(be.to_numpy(cache), ref_h) <= 1e-4
        assert rel_l2(be.to_numpy(p), ref_p) <= 1e-4


def test_onnxruntime_keeps_the_cache_as_a_bound_ortvalue(tiny_bundle):
    import onnxruntime as ort

    bundle = Bundle.open(tiny_bundle)
    feeds = dummy_inputs(bundle.specs["full"], DIMS, bundle.patch)
    with get_backend("onnxruntime", bundle, threads=1) as be:
        _, cache = be.full(*feeds.values())
        assert isinstance(cache, ort.OrtValue) and cache.device_name() == "cpu"


def test_all_anchor_disca_run_equals_full_run_and_backends_agree(tiny_bundle):
    runs = {}
    for name in INSTALLED:
        with Pipeline.load(tiny_bundle, backend=name) as pipe:
            full = pipe.generate("a red circle", steps=6, anchors="full", seed=1)
            every = pipe.generate("a red circle", steps=6, anchors=list(range(6)), seed=1)
            disca = pipe.generate("a red circle", steps=6, anchors=[0, 3], seed=1)
        np.testing.assert_array_equal(full.video, every.video)
        assert (disca.stats.full_calls, disca.stats.predictor_calls) == (2, 4)
        assert rel_l2(disca.video, full.video) > 1e-3  # the predictor really ran
        runs[name] = disca.video
    for name, video in runs.items():
        assert rel_l2(video, runs["onnxruntime"]) <= 1e-3, name


def test_run_stats_add_up(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe:
        r = pipe.generate("a blue square", steps=8, anchors=[0, 1, 4], frames=2, height=8, width=8)
    s = r.stats.to_dict()
    assert (s["full_calls"], s["predictor_calls"]) == (3, 5)
    assert [p["graph"] for p in s["per_step"]] == ["full", "full", "predictor", "predictor", "full"] + ["predictor"] * 3
    assert s["overhead_ms"] >= 0
    assert s["total_ms"] == pytest.approx(s["ms_per_full"] * 3 + s["ms_per_predictor"] * 5 + s["overhead_ms"])


def test_nan_stops_the_run_naming_step_and_graph(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe:
        text = np.full((1, 2, pipe.bundle.text_dim), np.nan, dtype=np.float32)
        with pytest.raises(InputError, match="text embeddings contains NaN"):  # the input's fault, not the graph's
            pipe.denoise(np.zeros((1, 3, 2, 8, 8), np.float32), text, steps=4, anchors=[0])
        huge = np.full((1, 3, 2, 8, 8), 3e38, np.float32)  # finite, but the graph overflows on it
        with pytest.raises(NonFiniteError, match="step 0: the full graph produced NaN"):
            pipe.denoise(huge, np.zeros_like(text), steps=4, anchors=[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frames": 6}, "frames=6 is outside the bundle's range 1..4"),
        ({"height": 7}, "height=7 is not a multiple of the patch size 2"),
        ({"batch": 4}, "batch=4 is outside"),
        ({"steps": 10}, "default anchors .* are for 20 steps"),
    ],
)
def test_shapes_outside_the_bundle_are_refused(tiny_bundle, kwargs, message):
    with Pipeline.load(tiny_bundle) as pipe, pytest.raises((ShapeError, ScheduleError), match=message):
        pipe.generate("a red circle", **kwargs)


def test_denoise_checks_user_embeddings(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe, pytest.raises(ShapeError, match=r"text embeddings must be \(1, L, 16\)"):
        pipe.denoise(np.zeros((1, 3, 2, 8, 8)), np.zeros((1, 3, 5)), steps=2, anchors=[0])


def test_prompt_embedding_is_deterministic(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe:
        a, b = pipe.embed_prompt("A red circle"), pipe.embed_prompt("a red circle")
        np.testing.assert_array_equal(a, b)
        assert a.shape == (3, 16)
        r1 = pipe.generate("a red circle", seed=5, steps=3, anchors=[0])
        r2 = pipe.generate("a red circle", seed=5, steps=3, anchors=[0])
        np.testing.assert_array_equal(r1.video, r2.video)


@pytest.mark.gpu
def test_torch_cuda_backend_matches_cpu(tiny_bundle):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from disca.runtime.backends import get_backend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import DiscaPolicy

    b = Bundle.open(tiny_bundle)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, b.channels, 2, 8, 8), dtype=np.float32)
    text = rng.standard_normal((1, 4, b.text_dim), dtype=np.float32)
    outs = []
    for device in ("cpu", "cuda"):
        with get_backend("torch", b, device=device) as backend:
            out, _ = denoise(backend, latent, text, steps=8, shift=3.0, policy=DiscaPolicy([0, 1, 4]))
        outs.append(out)
    rel = np.linalg.norm(outs[1] - outs[0]) / np.linalg.norm(outs[0])
    assert rel < 1e-3  # TF32 may be on for CUDA matmuls


def test_onnxruntime_runs_the_per_token_graphs_on_one_thread_with_the_same_numbers(tiny_bundle):
    """The head (and a predictor without blocks: the demo's) get `light_threads` intra-op threads, the rest
    `threads`; the thread count changes the time of a call, not its output."""
    from disca.runtime.pipeline import DEMO_BUNDLE

    def threads(be):
        return {g: s.get_session_options().intra_op_num_threads for g, s in be.sessions.items()}

    with get_backend("onnxruntime", Bundle.open(tiny_bundle)) as be:  # tiny preset: a predictor with a block
        assert threads(be)["head"] == 1 and threads(be)["predictor"] == threads(be)["full"] == 0
    demo = Bundle.open(DEMO_BUNDLE)
    dims = {**DIMS, "batch": 1, "frames": 4, "height": 8, "width": 8}  # the demo's patch is 2x4x4
    feeds = dummy_inputs(demo.specs["full"], dims, demo.patch, seed=4)
    out = {}
    for light in (1, None):
        with get_backend("onnxruntime", demo, light_threads=light) as be:
            assert threads(be)["predictor"] == threads(be)["head"] == (light or 0)
            _, cache = be.full(*feeds.values())
            out[light] = (be.predict(*feeds.values(), cache), be.head(*feeds.values(), cache))
    for a, b in zip(out[1], out[None]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="light_threads"):
        get_backend("onnxruntime", demo, light_threads=0)
