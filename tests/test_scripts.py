"""The developer scripts refuse bad arguments with one `Error: ...` line, before any heavy work.

Each test replaces the script's first expensive step (a worker, a server, a session, a sampling run) with
`_heavy`, so that an argument the script no longer checks up front fails the test at once instead of
starting a benchmark."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from disca.cli.run import main as run_cli
from tests.test_cli import error_line, invoke

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "disca" / "demo"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _heavy(*args, **kwargs):
    raise AssertionError("the script started its real work before refusing the bad argument")


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-bundle"], "does not exist"),
        ([DEMO, "--repeats", "0"], "--repeats"),
        ([DEMO, "--backends", "onnxruntime,nope"], "--backends"),
        ([DEMO, "--backends", "torch,torch"], "--backends"),
    ],
)
def test_bench_core_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("bench_core")
    monkeypatch.setattr(script, "mp", SimpleNamespace(get_context=_heavy))  # no workers spawned
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-bundle"], "does not exist"),
        ([DEMO, "--frames", "0"], "--frames"),
        ([DEMO, "--size", "1000"], "height=1000 is outside the bundle's range"),
    ],
)
def test_bench_graphs_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("bench_graphs")
    monkeypatch.setattr(script, "get_backend", _heavy)  # no ONNX Runtime sessions
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "missing-bundle"], "does not exist"),
        (["--requests", "0"], "--requests"),
        (["--concurrency", "1,x"], "--concurrency"),
        (["--concurrency", "0"], "--concurrency"),
        (["--baseline-repeats", "0"], "--baseline-repeats"),
        (["--max-queue-delay-ms", "nan"], "--max-queue-delay-ms"),
        (["--json", "."], "cannot write the --json report"),
    ],
)
def test_bench_serve_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("bench_serve")
    monkeypatch.setattr(script, "subprocess", SimpleNamespace(Popen=_heavy, DEVNULL=None))  # no server started
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "missing-bundle"], "does not exist"),
        (["--bundle", DEMO, "--plain-bundle", "missing-bundle"], "does not exist"),
        (["--bundle", DEMO, "--teacher", "missing-teacher"], "is not a disca checkpoint"),
        (["--bundle", DEMO, "--budgets", "6,x"], "--budgets"),
        (["--bundle", DEMO, "--budgets", "99"], "an anchor budget must be between 1 and"),
        (["--bundle", DEMO, "--n", "0"], "--n"),
    ],
)
def test_eval_demo_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("eval_demo")
    monkeypatch.setattr(script, "eval_set", _heavy)  # no sampling
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "missing-teacher", "s=missing-student"], "missing-teacher is not a disca checkpoint"),
        (["--teacher", ROOT / "checkpoints/demo-teacher", "s=missing-student"], "missing-student is not a disca"),
        (["--teacher", "t", "--steps", "20,x", "s=x"], "--steps"),
        (["--teacher", "t", "--steps", "", "s=x"], "--steps"),
        (["--teacher", "t", "--teacher-rows", "0", "s=x"], "--teacher-rows"),
        (["--teacher", "t", "--anchors", "1,2", "s=x"], "step 0 must be an anchor"),
        (["--teacher", "t", "--n", "0", "s=x"], "--n"),
    ],
)
def test_eval_restriction_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("eval_restriction")
    monkeypatch.setattr(script, "eval_set", _heavy)  # no sampling
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-checkpoint"], "missing-checkpoint is not a disca checkpoint"),
        (["--seed", "-1", "missing-checkpoint"], "--seed"),
    ],
)
def test_ablate_predictor_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("ablate_predictor")
    monkeypatch.setattr("disca.calibration.dataset.calibration_set", _heavy)  # no sampling
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-bundle", "--out", "demo.gif"], "does not exist"),
        (["--out", "demo.avi"], "the output must end in one of"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_readme_gif_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("readme_gif")
    monkeypatch.setattr(script.Pipeline, "generate", _heavy)  # no sampling
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "t", "missing-checkpoint"], "missing-checkpoint is not a disca checkpoint"),
        (["--teacher", "t", "--n", "0", "x"], "--n"),
    ],
)
def test_distill_probe_bad_arguments(args, message, tmp_path, monkeypatch):
    script = _script("distill_probe")
    monkeypatch.setattr(script, "load_checkpoint", _heavy)
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(script.main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n"),
        (["--seeds", "0"], "--seeds"),
        (["--noise", "nan"], "--noise"),
        (["--n", "1", "--size", "8"], "clip size must be at least 16 px"),
    ],
)
def test_eval_task_accuracy_bad_arguments(args, message):
    assert message in error_line(invoke(_script("eval_task_accuracy").main, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-run"], "missing-run has no log.jsonl"),
        (["RUN", "--window", "0"], "--window"),
    ],
)
def test_distill_log_bad_arguments(args, message, tmp_path, monkeypatch, capsys):
    """An argparse script: its error is argparse's last line, `distill_log.py: error: ...`, exit 2."""
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    args = [str(tmp_path) if a == "RUN" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["distill_log.py", *args])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        _script("distill_log").main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert line.startswith("distill_log.py: error: ") and message in line


@pytest.mark.parametrize("value", ["", "  "])
def test_run_refuses_empty_text_embeddings(value):
    line = error_line(invoke(run_cli, ["--text-embeddings", value]))
    assert "--text-embeddings" in line and "is empty: give a .npy file" in line
