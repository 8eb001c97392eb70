"""Training on tiny models: the math (MeanFlow target, restricted times), resumption, and the CLI's errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from disca.cli.train import main as train_cli
from disca.errors import CheckpointError, ConfigError
from disca.models import CachePredictor, preset, randomize_
from disca.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from disca.models.text import WordEmbedding
from disca.training.distill import meanflow_target, sample_times, student_from_teacher, train_student
from disca.training.flow import grid, guided_velocity, teacher_endpoint
from disca.training.loop import Guard, TrainArgs
from disca.training.predictor import schedule_pairs, train_predictor, training_pairs
from disca.training.teacher import teacher_config, train_teacher
from tests.test_cli import error_line, invoke

TINY = dict(batch=2, frames=2, size=16, ckpt_every=2, eval_every=0, eval_n=2, warmup=1)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny teacher checkpoint with random weights (so that every output is non-trivial)."""
    cfg = teacher_config(preset("tiny"))
    from disca.models import VideoDiT

    dit = randomize_(VideoDiT(cfg.dit), 3)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_checkpoint(path, cfg, dit, text=WordEmbedding(cfg.vocab, cfg.dit.text_dim), extra={"stage": "teacher"})
    return path


def test_student_equals_teacher_at_r_equal_t(tiny_teacher):
    teacher = load_checkpoint(tiny_teacher, require_predictor=False)
    student = student_from_teacher(teacher).dit
    z, t, text = torch.randn(2, 3, 2, 8, 8), torch.rand(2), torch.randn(2, 5, 16)
    torch.testing.assert_close(student(z, t, t, text), teacher.dit(z, t, t, text))
    assert not torch.allclose(student(z, t, t * 0.3, text), teacher.dit(z, t, t, text))


def test_meanflow_target_matches_finite_differences(tiny_teacher):
    """u_tgt = v - (t - r)(v du/dz + du/dt): the JVP against a central difference in float64."""
    student = student_from_teacher(load_checkpoint(tiny_teacher, require_predictor=False)).dit.double()
    g = torch.Generator().manual_seed(0)
    z, v = (
        torch.randn(2, 3, 2, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 2, 8, 8, generator=g).double(),
    )
    t, r, text = torch.tensor([0.8, 0.5]).double(), torch.tensor([0.6, 0.1]).double(), torch.randn(2, 5, 16).double()
    u, target = meanflow_target(student, z, t, r, v, text)
    eps = 1e-4  # timestep features are computed in float32: a larger step than float64 alone would need
    f = lambda z_, t_: student(z_, t_, r, text)  # noqa: E731
    dudt = (f(z + eps * v, t + eps) - f(z - eps * v, t - eps)) / (2 * eps)
    fd_target = v - (t - r).view(-1, 1, 1, 1, 1) * dudt
    assert torch.linalg.norm(target - fd_target) / torch.linalg.norm(fd_target) < 1e-2
    torch.testing.assert_close(u, student(z, t, r, text))


def test_at_r_0_an_x_prediction_students_target_has_no_teacher_term(tiny_teacher):
    """Why the interval that ends at the data drifts: with u = (z - x_hat) / t, the identity's target at r = 0 is
    u + d x_hat/dt along (v, 1), the student's own output and derivative; v only steers the derivative."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ck = load_checkpoint(tiny_teacher, require_predictor=False)
    ck.cfg.dit.prediction = "x"  # the demo's parametrization; the tiny preset predicts velocity
    student = student_from_teacher(ck).dit.double()
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 3, 2, 8, 8, generator=g).double(), torch.randn(2, 3, 2, 8, 8, generator=g).double()
    t, r, text = torch.tensor([0.3, 0.6]).double(), torch.zeros(2).double(), torch.randn(2, 5, 16).double()
    u, target = meanflow_target(student, z, t, r, v, text)
    with sdpa_kernel(SDPBackend.MATH):
        _, dx = torch.func.jvp(
            lambda z_, t_: z_ - t_.view(-1, 1, 1, 1, 1) * student(z_, t_, r, text), (z, t), (v, torch.ones_like(t))
        )
    torch.testing.assert_close(target, u.detach() + dx, rtol=1e-9, atol=1e-9)


def test_teacher_endpoint_is_euler_on_the_guided_teacher(tiny_teacher):
    ck = load_checkpoint(tiny_teacher, require_predictor=False)
    g = torch.Generator().manual_seed(0)
    z, text = torch.randn(2, 3, 2, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    null, t = torch.zeros_like(text), torch.tensor([0.2, 0.4])
    with torch.no_grad():
        one = z - t.view(-1, 1, 1, 1, 1) * guided_velocity(ck.dit, z, t, text, null, 4.0)
        torch.testing.assert_close(teacher_endpoint(ck.dit, z, t, text, null, 4.0, 1), one)
        half = z - (t / 2).view(-1, 1, 1, 1, 1) * guided_velocity(ck.dit, z, t, text, null, 4.0)
        two = half - (t / 2).view(-1, 1, 1, 1, 1) * guided_velocity(ck.dit, half, t / 2, text, null, 4.0)
        torch.testing.assert_close(teacher_endpoint(ck.dit, z, t, text, null, 4.0, 2), two)
        # down to r > 0 (`--ode-gaps`): Euler steps over [r, t] only
        r = torch.tensor([0.1, 0.3])
        step = z + (r - t).view(-1, 1, 1, 1, 1) * guided_velocity(ck.dit, z, t, text, null, 4.0)
        torch.testing.assert_close(teacher_endpoint(ck.dit, z, t, text, null, 4.0, 1, r=r), step)


def test_restricted_times_are_grid_neighbours():
    sig = grid(20, 5.0)
    t, r = sample_times(
        4000, torch.Generator().manual_seed(0), sig, max_gap=2, plain=False, equal_frac=0.25, device="cpu"
    )
    it = torch.searchsorted(-sig, -t)
    ir = torch.searchsorted(-sig, -r)
    assert torch.all(sig[it] == t) and torch.all(sig[ir] == r)  # on the grid
    gaps = ir - it
    assert set(gaps.tolist()) == {0, 1, 2}  # neighbours at most 2 apart (0: r = t)
    assert 0.2 < (gaps == 0).float().mean() < 0.45
    t, r = sample_times(4000, torch.Generator().manual_seed(0), sig, 2, plain=True, equal_frac=0.0, device="cpu")
    assert torch.all(r <= t) and (t - r).max() > 0.5  # plain MeanFlow also trains long jumps


def test_schedule_pairs_follow_the_deployment_gaps():
    assert schedule_pairs([0, 1, 2, 5, 9], 12) == [(2, 3), (2, 4), (5, 6), (5, 7), (5, 8), (9, 10), (9, 11)]


def test_training_pairs_add_every_gap_up_to_max_gap():
    pairs = training_pairs([0, 2], 4, max_gap=2)
    assert pairs[:2] == [(0, 1), (2, 3)] and len(set(pairs)) == len(pairs)  # the schedule first, each pair once
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    assert training_pairs([0, 2], 4) == schedule_pairs([0, 2], 4)


def _weights(path):
    ck = load_checkpoint(path, require_predictor=False)
    return torch.cat([p.flatten() for m in (ck.dit, ck.predictor, ck.text) if m is not None for p in m.parameters()])


def test_teacher_resume_is_exact(tmp_path):
    base = preset("tiny")
    train_teacher(tmp_path / "a", base, TrainArgs(steps=4, **TINY))
    train_teacher(tmp_path / "b", base, TrainArgs(steps=2, **TINY))
    train_teacher(tmp_path / "b", base, TrainArgs(steps=4, **TINY))  # resumed from step 2
    torch.testing.assert_close(_weights(tmp_path / "a"), _weights(tmp_path / "b"), rtol=0, atol=0)
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["stage"] == "teacher" and meta["step"] == 4 and "adherence" in meta["metrics"]


def test_ema_is_saved_resumed_exactly_and_loaded_by_default(tmp_path):
    base = preset("tiny")
    args = dict(TINY, ema=0.5)
    train_teacher(tmp_path / "a", base, TrainArgs(steps=4, **args))
    train_teacher(tmp_path / "b", base, TrainArgs(steps=2, **args))
    train_teacher(tmp_path / "b", base, TrainArgs(steps=4, **args))
    from safetensors.torch import load_file

    ema_a, ema_b = (
        load_file(str(tmp_path / "a" / "ema.safetensors")),
        load_file(str(tmp_path / "b" / "ema.safetensors")),
    )
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    raw = load_checkpoint(tmp_path / "a", require_predictor=False, ema=False)
    smooth = load_checkpoint(tmp_path / "a", require_predictor=False)
    key = "blocks.0.linear1.weight"
    torch.testing.assert_close(smooth.dit.state_dict()[key], ema_a[f"dit.{key}"])
    assert not torch.equal(raw.dit.state_dict()[key], smooth.dit.state_dict()[key])


def test_resume_from_a_weights_only_checkpoint(tmp_path):
    base = preset("tiny")
    train_teacher(tmp_path / "t", base, TrainArgs(steps=2, **TINY))
    before = _weights(tmp_path / "t")
    for f in ("optimizer.safetensors", "optimizer.json"):
        (tmp_path / "t" / f).unlink()
    train_teacher(tmp_path / "t", base, TrainArgs(steps=3, **TINY))
    assert json.loads((tmp_path / "t" / "config.json").read_text())["step"] == 3
    assert not torch.equal(before, _weights(tmp_path / "t"))


def test_student_and_predictor_stages_run_and_resume(tiny_teacher, tmp_path):
    train_student(tmp_path / "s", tiny_teacher, TrainArgs(steps=2, **TINY), grid_steps=4)
    before = _weights(tmp_path / "s")
    train_student(tmp_path / "s", tiny_teacher, TrainArgs(steps=3, **TINY), grid_steps=4)
    assert not torch.equal(before, _weights(tmp_path / "s"))
    metrics = train_predictor(
        tmp_path / "p",
        tmp_path / "s",
        TrainArgs(steps=2, **TINY),
        anchors=[0, 2],
        steps=4,
        trajectories=4,
        adversarial=0.1,
    )
    assert {"adherence_full", "adherence_disca", "psnr_disca_vs_full"} <= set(metrics)
    best = json.loads((tmp_path / "p" / "best" / "config.json").read_text())
    assert best["stage"] == "predictor" and best["metrics"] == metrics  # ranked by DisCa sampling's adherence
    ck = load_checkpoint(tmp_path / "p")
    assert ck.predictor is not None and ck.text is not None and ck.cfg.dit.mean_flow
    # the forecast predictor, 0 blocks, modulated: trains, and its config says what the runtime feeds it
    train_predictor(
        tmp_path / "f",
        tmp_path / "s",
        TrainArgs(steps=2, **TINY),
        anchors=[0, 1, 3],
        steps=4,
        trajectories=4,
        max_gap=2,
        depth=0,
        forecast=True,
        rollout_weight=1.0,
        modulate=True,
    )
    ck = load_checkpoint(tmp_path / "f")
    assert ck.cfg.predictor.forecast and ck.cfg.predictor.depth == 0 and len(ck.predictor.blocks) == 0
    assert ck.cfg.predictor.modulate and ck.predictor.modulation is not None  # kept through the checkpoint
    # its loss is relative to the forecast's own error: exactly 1 for the untrained (zero-initialised) correction
    first = _log(tmp_path / "f")[0]
    assert first["step"] == 1 and first["feat_rel"] == pytest.approx(1.0, abs=1e-5)
    assert first["vel_rel"] == pytest.approx(1.0, abs=1e-5)
    assert first["seg_rel"] == pytest.approx(1.0, abs=1e-4)  # the rollout's loss, relative to the forecast's too


def test_rollout_samples_a_segment_as_the_runtime_does(tmp_path, tiny_teacher):
    from disca.runtime.backends.torch_backend import TorchBackend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import make_policy
    from disca.training.flow import grid
    from disca.training.predictor import record_trajectories, rollout, training_segments

    assert training_segments([[0, 1, 4], [0, 2]], 6) == [(-1, 0, 2), (0, 1, 4), (0, 2, 6), (1, 4, 6)]
    train_student(tmp_path / "s", tiny_teacher, TrainArgs(steps=1, **TINY), grid_steps=4)
    ck = load_checkpoint(tmp_path / "s", require_predictor=False)
    ck.cfg.predictor.forecast = ck.cfg.predictor.residual = True
    ck.cfg.predictor.depth = 0
    predictor = CachePredictor(ck.cfg.dit, ck.cfg.predictor).eval()
    noise, text = torch.randn(2, 3, 2, 16, 16), torch.randn(2, 3, ck.cfg.dit.text_dim)
    data = record_trajectories(ck.dit.eval(), text, noise, steps=4, shift=5.0)
    # anchors 0 and 1 full, steps 2 and 3 on TaylorSeer-1's forecast: the segment (0, 1, end) of the rollout
    with torch.no_grad():
        x_pred, x_base = rollout(ck.dit, predictor, data, torch.tensor([0, 1]), 0, 1, 4, grid(4, 5.0), "cpu")
    with TorchBackend.from_modules(ck.dit, predictor) as backend:
        ts1, _ = denoise(
            backend, noise.numpy(), text.numpy(), steps=4, shift=5.0, policy=make_policy("taylorseer1", [0, 1])
        )
    np.testing.assert_allclose(x_base.numpy(), ts1, atol=1e-4)
    # the untrained (zero) correction is the forecast itself; a trained one moves the end point
    torch.testing.assert_close(x_pred, x_base)
    torch.nn.init.normal_(predictor.fusion[-1].weight, std=0.1)
    with torch.no_grad():
        moved, _ = rollout(ck.dit, predictor, data, torch.tensor([0, 1]), 0, 1, 4, grid(4, 5.0), "cpu")
    assert not torch.allclose(moved, x_base)


def test_forecast_triples_follow_the_anchor_lists():
    from disca.training.predictor import anchor_family, relative_error, training_triples

    lists = anchor_family(20, [0, 1, 2, 5, 9, 13, 17, 19], max_spacing=3)
    assert [0, 1, 4, 7, 10, 13, 16, 19] in lists and [0, 2, 5, 8, 10, 12, 15, 18] in lists
    triples = training_triples([[0, 3, 5], [0, 2]], 8)
    # each cached step of each list: (the anchor before the last, the last anchor before it, the step)
    assert triples == sorted(
        {(-1, 0, 1), (-1, 0, 2), (0, 3, 4), (3, 5, 6), (3, 5, 7), (-1, 0, 1), (0, 2, 3), (0, 2, 4)}
        | {(0, 2, s) for s in range(3, 8)}
    )
    target, base = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert relative_error(base, base, target).item() == pytest.approx(1.0)
    assert relative_error(target, base, target).item() == 0.0
    halfway = relative_error((base + target) / 2, base, target).item()
    assert halfway == pytest.approx(0.25, rel=1e-5)


def test_forecast_cache_is_the_runtimes_taylor_forecast():
    from disca.runtime.schedule import TaylorForecast
    from disca.training.predictor import Trajectories, forecast_cache, previous_anchors

    hiddens = torch.randn(2, 6, 5, 4)
    data = Trajectories(torch.zeros(2, 1, 1), torch.zeros(2, 6, 1, 1, 1, 1), hiddens)
    idx, prev, a, s = torch.tensor([0, 1]), torch.tensor([1, -1]), torch.tensor([3, 0]), torch.tensor([5, 2])
    got = forecast_cache(data, idx, prev, a, s)
    forecast = TaylorForecast(1)
    forecast.update(1, hiddens[0, 1].numpy())
    forecast.update(3, hiddens[0, 3].numpy())
    torch.testing.assert_close(got[0], torch.from_numpy(forecast(5)))
    torch.testing.assert_close(got[1], hiddens[1, 0])  # no earlier anchor: the cache itself
    prev = previous_anchors(np.random.default_rng(0), torch.tensor([0, 1, 5, 5, 5]), 3)
    assert prev[0] == -1 and prev[1] == 0 and all(2 <= p < 5 for p in prev[2:])


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_distill_logs_every_step_keeps_the_best_and_resumes_its_log(tiny_teacher, tmp_path):
    out = tmp_path / "s"
    args = dict(TINY, eval_every=1, ckpt_every=2, batch=8)  # batch 8 on a 4-step grid: some intervals end at r = 0
    # the identity's recipe (--identity-gaps), whose log carries the JVP term
    train_student(out, tiny_teacher, TrainArgs(steps=3, **args), grid_steps=4, end_steps=2, ode_gaps=False)
    log = _log(out)
    steps = [r for r in log if "eval" not in r]
    evals = [r["eval"] for r in log if "eval" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and [e["step"] for e in evals] == [1, 2, 3]
    for key in ("loss", "mse", "target_rms", "jvp_rms", "v_rms", "grad_norm", "lr", "mse_end"):
        assert all(np.isfinite(r[key]) for r in steps), key
    assert all(any(k.startswith("mse_t") for k in r) for r in steps)  # the per-t buckets
    # best/: the latest evaluation with the top score (ties go to the later one), loadable on its own
    top = max(e["adherence_full"] for e in evals)
    best_step = max(e["step"] for e in evals if e["adherence_full"] == top)
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["step"] == best_step and best["metrics"]["adherence_full"] == top
    assert load_checkpoint(out / "best", require_predictor=False).cfg.dit.mean_flow
    # resumed from the step-2 checkpoint? no: the last one is step 3; continue to 5 and the log reads as one run
    train_student(out, tiny_teacher, TrainArgs(steps=5, **args), grid_steps=4, end_steps=2, ode_gaps=False)
    assert [r["step"] for r in _log(out) if "eval" not in r] == [1, 2, 3, 4, 5]
    assert (out / "best" / "config.json").is_file()
    # the default, --ode-gaps: every r < t interval on the teacher's ODE, no JVP computed; the config records it
    train_student(tmp_path / "o", tiny_teacher, TrainArgs(steps=2, **args), grid_steps=4, end_steps=1)
    assert json.loads((tmp_path / "o" / "config.json").read_text())["train"]["ode_gaps"] is True
    steps = [r for r in _log(tmp_path / "o") if "eval" not in r]
    assert all("jvp_rms" not in r and np.isfinite(r["mse_gap"]) for r in steps)


def test_guard_stops_on_a_blow_up_not_on_noise():
    g = Guard(20.0, ("loss", "target_rms"))
    rng = np.random.default_rng(0)
    for _ in range(200):  # noisy but level: never stops
        assert g.check({"loss": rng.uniform(0.5, 2.0), "target_rms": 1.0}) is None
    problem = None
    for i in range(60):  # the target's norm grows 20% a step
        problem = problem or g.check({"loss": 1.0, "target_rms": 1.2**i})
    assert problem and problem.startswith("target_rms rose to")
    assert Guard(20.0, ("loss",)).check({"loss": float("nan")}) == "loss is nan"
    assert Guard(0.0, ("loss",)).check({"loss": float("inf")}) == "loss is inf"  # off: still stops on non-finite


def test_an_absurd_learning_rate_stops_with_one_clear_error(tiny_teacher, tmp_path):
    """Forced divergence: lr 1e3 on the tiny model. The CLI says what diverged, in one line, and
    leaves the last checkpoint as it was."""
    out = tmp_path / "s"
    common = ["distill", "--teacher", str(tiny_teacher), "--out", str(out), "--batch", "2", "--frames", "2"]
    common += ["--size", "16", "--grid-steps", "4", "--eval-every", "0", "--eval-n", "2", "--ema", "0"]
    r = CliRunner().invoke(train_cli, [*common, "--steps", "2", "--ckpt-every", "2", "--warmup", "1"])
    assert r.exit_code == 0, r.output
    before = _weights(out)
    r = CliRunner().invoke(train_cli, [*common, "--steps", "200", "--ckpt-every", "1000", "--lr", "1e3"])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "distill diverged at step" in lines[0] and "lower --lr" in lines[0], r.output
    assert "Traceback" not in r.output
    assert _log(out)[-1]["diverged"]
    torch.testing.assert_close(_weights(out), before, rtol=0, atol=0)  # the checkpoint is untouched


def test_trained_checkpoint_exports_with_its_text_table(tiny_teacher, tmp_path):
    from disca.build import build_bundle
    from disca.runtime import Pipeline

    teacher = load_checkpoint(tiny_teacher, require_predictor=False)
    student = student_from_teacher(teacher)
    from disca.models import CachePredictor

    ck = Checkpoint(
        student.cfg, student.dit, randomize_(CachePredictor(student.cfg.dit, student.cfg.predictor)), teacher.text
    )
    ranges = {"batch": [1, 1, 2], "frames": [1, 2, 2], "height": [4, 8, 8], "width": [4, 8, 8], "text_len": [1, 5, 5]}
    from disca.spec import ShapeRanges

    out = build_bundle(ck.cfg, ck.dit, ck.predictor, tmp_path / "b", text=ck.text, ranges=ShapeRanges(**ranges))
    with Pipeline.load(out) as pipe:
        emb = pipe.embed_prompt("a red circle moving left")
        expected = teacher.text.encode(["a red circle moving left"])[0].detach().numpy()
        np.testing.assert_allclose(emb, expected)
        with pytest.raises(Exception, match="unknown word 'purple'.*known words: a, red"):
            pipe.embed_prompt("a purple circle moving left")


def test_train_cli_errors(tmp_path, tiny_teacher):
    runner = CliRunner()
    r = runner.invoke(train_cli, ["distill", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and "config.json is missing" in r.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("mine")
    r = runner.invoke(train_cli, ["teacher", "--preset", "tiny", "--out", str(tmp_path / "junk"), "--steps", "1"])
    assert r.exit_code == 1 and "is not a disca checkpoint: choose another --out" in r.output
    assert (tmp_path / "junk" / "file.txt").read_text() == "mine"
    shutil.copytree(tiny_teacher, tmp_path / "t")
    r = runner.invoke(
        train_cli, ["distill", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "t"), "--steps", "1"]
    )
    assert r.exit_code == 1 and "holds a 'teacher' run, not 'distill'" in r.output
    r = runner.invoke(train_cli, ["predictor", "--student", str(tiny_teacher), "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "is not a distilled student" in r.output


TINY_CLI = ["--batch", "2", "--frames", "2", "--size", "16", "--eval-every", "0", "--eval-n", "2", "--warmup", "1"]
TINY_CLI += ["--ckpt-every", "2", "--ema", "0", "--device", "cpu"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    "stage, bad, option, allowed",
    [
        ("teacher", ["--batch", "-1"], "--batch", "x>=1"),
        ("teacher", ["--batch", "0"], "--batch", "x>=1"),  # was reported as a divergence
        ("teacher", ["--lr", "nan"], "--lr", "x>0"),
        ("teacher", ["--lr", "-1"], "--lr", "x>0"),
        ("teacher", ["--steps", "0"], "--steps", "x>=1"),  # exited 0 having done nothing
        ("teacher", ["--steps", "-5"], "--steps", "x>=1"),
        ("teacher", ["--ckpt-every", "0"], "--ckpt-every", "x>=1"),
        ("teacher", ["--eval-n", "0"], "--eval-n", "x>=1"),
        ("teacher", ["--seed", "-1"], "--seed", "0<=x<=4294967295"),
        ("teacher", ["--seed", str(2**70)], "--seed", "0<=x<=4294967295"),
        ("teacher", ["--ema", "nan"], "--ema", "0<=x<1"),  # saved all-NaN EMA weights as the best
        ("teacher", ["--ema", "1.5"], "--ema", "0<=x<1"),
        ("teacher", ["--guard", "nan"], "--guard", "x>=0"),
        ("teacher", ["--text-dropout", "2"], "--text-dropout", "0<=x<=1"),
        ("teacher", ["--device", "bogus"], "--device", "expected cpu, cuda"),
        pytest.param("teacher", ["--device", "cuda"], "--device", "use --device cpu", marks=NO_CUDA),
        ("teacher", ["--out", "FILE"], "--out", "it is a file"),
        ("distill", ["--max-gap", "0"], "--max-gap", "x>=1"),
        ("predictor", ["--trajectories", "0"], "--trajectories", "x>=1"),
        ("predictor", ["--adversarial", "-1"], "--adversarial", "x>=0"),
        ("predictor", ["--max-gap", "4"], "--max-gap", "below --grid-steps (4)"),  # no gap of 4 steps in 4
        ("predictor", ["--latent", "2,8,8"], "--latent", "go with --from diffusers"),  # ignored by a student run
        ("data", ["--size", "100000"], "--size", "16<=x<=1024"),  # asked for terabytes
        ("data", ["--n", "-1"], "--n", "1<=x<=100000"),
    ],
)
def test_bad_train_options_are_refused_before_any_work(tiny_teacher, tmp_path, stage, bad, option, allowed):
    out = tmp_path / "out"
    head = {
        "teacher": ["teacher", "--preset", "tiny", *TINY_CLI, "--steps", "1"],
        "distill": ["distill", "--teacher", tiny_teacher, "--grid-steps", "4", *TINY_CLI, "--steps", "1"],
        "predictor": ["predictor", "--student", tmp_path / "student", "--grid-steps", "4", "--schedule", "0,2"],
        "data": ["data", "--frames", "2", "--size", "16"],
    }[stage]
    if "FILE" in bad:
        (tmp_path / "file").write_text("mine")
        bad = [tmp_path / "file" if a == "FILE" else a for a in bad]
    line = error_line(invoke(train_cli, [*head, "--out", out, *bad]))
    assert option in line and allowed in line, line
    assert not out.exists()  # refused before any work
    assert "FILE" not in bad or (tmp_path / "file").read_text() == "mine"


def test_an_out_that_would_delete_another_checkpoint_is_refused(tmp_path):
    """Every save replaces --out whole: a student inside the teacher's directory was deleted by the teacher's
    next checkpoint. Now --out may neither sit inside a checkpoint nor hold anything a save did not write."""
    t = tmp_path / "t"
    r = invoke(train_cli, ["teacher", "--preset", "tiny", *TINY_CLI, "--steps", "2", "--out", t])
    assert r.exit_code == 0, r.output
    distill = ["distill", "--grid-steps", "4", *TINY_CLI, "--steps", "1"]
    assert "is inside the checkpoint" in error_line(invoke(train_cli, [*distill, "--teacher", t, "--out", t / "in"]))
    assert not (t / "in").exists()
    assert "is --teacher itself" in error_line(invoke(train_cli, [*distill, "--teacher", t, "--out", t]))
    # a checkpoint already inside (written before this check existed): resuming the outer run keeps it
    save_checkpoint(t / "in", *_tiny_teacher_parts(), extra={"stage": "teacher"})
    nested = sorted(p.name for p in (t / "in").iterdir())
    line = error_line(invoke(train_cli, ["teacher", "--preset", "tiny", *TINY_CLI, "--steps", "4", "--out", t]))
    assert "holds the checkpoint" in line and "move it out" in line
    assert "is inside --out" in error_line(invoke(train_cli, [*distill, "--teacher", t / "in", "--out", t]))
    with pytest.raises(CheckpointError, match="holds the checkpoint"):  # the library refuses before training too
        train_teacher(t, preset("tiny"), TrainArgs(steps=4, **TINY))
    assert sorted(p.name for p in (t / "in").iterdir()) == nested
    assert json.loads((t / "config.json").read_text())["step"] == 2
    # and the save itself never deletes what it did not write, whoever calls it
    save_checkpoint(tmp_path / "c", *_tiny_teacher_parts())
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="it holds notes.txt, which is not part of a checkpoint"):
        save_checkpoint(tmp_path / "c", *_tiny_teacher_parts())
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
    # once it is moved out, the run resumes; a killed writer's temporary of its own is no obstacle
    (t / "in").rename(tmp_path / "in")
    (t / ".best.999999.x.tmp").mkdir()
    r = invoke(train_cli, ["teacher", "--preset", "tiny", *TINY_CLI, "--steps", "4", "--out", t])
    assert r.exit_code == 0, r.output
    assert json.loads((t / "config.json").read_text())["step"] == 4


def _tiny_teacher_parts():
    from disca.models import VideoDiT

    cfg = teacher_config(preset("tiny"))
    return cfg, VideoDiT(cfg.dit)


def _bundle_with_lists(tmp_path, lists: dict, steps: int):
    """A copy of the shipped demo bundle whose searched lists are `lists` on a `steps`-step grid."""
    from disca.bundle import SHIPPED_DEMO

    path = tmp_path / "bundle"
    shutil.copytree(SHIPPED_DEMO, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["anchor_lists"] = {"steps": steps, "shift": 5.0, "samples": 4, "lists": lists}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_fine_tune_starts_from_the_trained_predictor_on_the_searched_lists(tiny_teacher, tmp_path):
    from disca.training.predictor import searched_lists, training_segments

    train_student(tmp_path / "s", tiny_teacher, TrainArgs(steps=1, **TINY), grid_steps=4)
    forecast = dict(
        anchors=[0, 2], steps=4, trajectories=4, max_gap=1, depth=0, forecast=True, modulate=True, rollout_weight=1.0
    )
    train_predictor(tmp_path / "p", tmp_path / "s", TrainArgs(steps=3, **(TINY | {"lr": 1e-2, "ema": 0.5})), **forecast)
    source = load_checkpoint(tmp_path / "p")  # its EMA weights: what was evaluated and exported
    raw = load_checkpoint(tmp_path / "p", ema=False)
    assert not torch.equal(source.predictor.fusion[-1].weight, raw.predictor.fusion[-1].weight)
    bundle = _bundle_with_lists(tmp_path, {"1": [0], "2": [0, 3], "3": [0, 1, 3], "4": [0, 1, 2, 3]}, 4)
    # every budget that caches a step; their runs of cached steps are kept whole, beyond --max-gap
    assert searched_lists(bundle, 4, 5.0) == [[0], [0, 3], [0, 1, 3]]
    assert (-1, 0, 4) in training_segments(searched_lists(bundle, 4, 5.0), 4)
    with pytest.raises(ConfigError, match="searched for 4 steps at shift 5.0, not --grid-steps 20"):
        searched_lists(bundle, 20, 5.0)
    # learning rate 0: the fine-tune's weights are exactly where it started, the source's EMA weights
    args = TrainArgs(steps=1, **(TINY | {"lr": 1e-30}))
    train_predictor(tmp_path / "ft", tmp_path / "p", args, lists_from=bundle, fine_tune=True, **forecast)
    tuned = load_checkpoint(tmp_path / "ft")
    for a, b in zip(tuned.predictor.state_dict().values(), source.predictor.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert _log(tmp_path / "ft")[0]["feat_rel"] != pytest.approx(1.0, abs=1e-4)  # not the untrained forecast
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["fine_tune"] is True


def test_fine_tune_and_lists_errors(tiny_teacher, tmp_path):
    train_student(tmp_path / "s", tiny_teacher, TrainArgs(steps=1, **TINY), grid_steps=4)
    head = ["predictor", "--grid-steps", "4", "--schedule", "0,2", *TINY_CLI, "--steps", "1"]
    line = error_line(invoke(train_cli, [*head, "--student", tmp_path / "s", "--fine-tune", "--out", tmp_path / "o"]))
    assert "holds no predictor" in line
    line = error_line(
        invoke(train_cli, [*head, "--student", tmp_path / "s", "--lists", tmp_path, "--out", tmp_path / "o"])
    )
    assert "manifest.json" in line  # not a bundle
    bundle = _bundle_with_lists(tmp_path, {"2": [0, 2]}, 4)
    line = error_line(
        invoke(train_cli, [*head, "--student", tmp_path / "s", "--lists", bundle, "--out", tmp_path / "o"])
    )
    assert "it is for --forecast" in line
    forecast = ["--forecast", "--predictor-depth", "0"]
    r = invoke(train_cli, [*head, "--student", tmp_path / "s", *forecast, "--out", tmp_path / "p"])
    assert r.exit_code == 0, r.output
    ft = [*head, "--student", tmp_path / "p", "--fine-tune", "--out", tmp_path / "o"]
    assert "keeps the predictor of" in error_line(invoke(train_cli, [*ft, "--forecast", "--predictor-depth", "1"]))
    assert "keeps the predictor of" in error_line(invoke(train_cli, ft))  # --forecast left out
    line = error_line(invoke(train_cli, [*ft, *forecast, "--lists", _bundle_with_lists(tmp_path / "x", {}, 20)]))
    assert "has no searched anchor lists" in line
    assert not (tmp_path / "o").exists()
