import json

import numpy as np
import pytest
from click.testing import CliRunner

from disca.cli.export import main as export_cli
from disca.cli.run import main as run_cli

SHAPE = ["--frames", "2", "--height", "8", "--width", "8"]
RUN = ["--prompt", "a red circle moving left", "--steps", "4", "--schedule", "0,2", *SHAPE]


def invoke(cli, args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    """A user error is one `Error: ...` line and a non-zero exit (no traceback)."""
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


def test_run_json_reports_the_statistics(tiny_bundle, tmp_path):
    result = invoke(run_cli, [tiny_bundle, *RUN, "--json", "--out", tmp_path / "v.npy"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert {"full_calls", "predictor_calls", "ms_per_full", "ms_per_predictor", "overhead_ms", "total_ms"} <= set(stats)
    assert (stats["full_calls"], stats["predictor_calls"]) == (2, 2)
    assert np.load(tmp_path / "v.npy").shape == (1, 3, 2, 8, 8)


def test_run_writes_a_gif_and_prints_a_summary(tiny_bundle, tmp_path):
    import imageio.v3 as iio

    result = invoke(run_cli, [tiny_bundle, *RUN, "--out", tmp_path / "v.gif", "--upscale", "2", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "predictor" in result.output and "runtime overhead" in result.output
    frames = iio.imread(tmp_path / "v.gif")
    assert frames.shape[:3] == (2, 16, 32)  # 2 frames, upscaled 2x, batch side by side
    assert not list(tmp_path.glob(".v*"))  # no temporary file left


def test_run_takes_text_embeddings_and_full_schedule(tiny_bundle, tmp_path):
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    args = [
        tiny_bundle,
        "--text-embeddings",
        tmp_path / "emb.npy",
        "--steps",
        "3",
        "--schedule",
        "full",
        "--json",
        *SHAPE,
    ]
    stats = json.loads(invoke(run_cli, args).output)
    assert (stats["full_calls"], stats["predictor_calls"]) == (3, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--schedule", "1,2"], "step 0 must be an anchor"),
        (["--schedule", "0,a"], "comma-separated step numbers"),
        (["--anchors", "2"], "give either --schedule (the anchor steps) or --anchors (how many)"),
        (["--frames", "64"], "frames=64 is outside the bundle's range"),
        (["--out", "clip.avi"], "must end in one of .gif, .mp4, .npy"),
        (["--providers", "cuda"], "provider CUDAExecutionProvider is not available"),
        (["--text-embeddings", "missing.npy"], "give exactly one of --prompt"),
    ],
)
def test_run_user_errors_are_one_line(tiny_bundle, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(run_cli, [tiny_bundle, *RUN, *args]))
    assert message in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_run_error_on_missing_or_corrupt_bundle(tmp_path, bundle_copy):
    assert "does not exist" in error_line(invoke(run_cli, [tmp_path / "nope", "--prompt", "x"]))
    (bundle_copy / "manifest.json").write_text("{")
    assert "unreadable or corrupt" in error_line(invoke(run_cli, [bundle_copy, "--prompt", "x"]))


def test_run_torch_backend_needs_weights(tiny_bundle_plain):
    line = error_line(invoke(run_cli, [tiny_bundle_plain, *RUN, "--backend", "torch"]))
    assert "has no PyTorch weights" in line


def test_inspect_reports_and_verifies(tiny_bundle, bundle_copy):
    result = invoke(export_cli, ["inspect", tiny_bundle, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (
        report["ok"]
        and report["params"]["predictor"] > 0
        and set(report["graphs"]) == {"full", "predictor", "head", "first", "rest", "tail"}
    )
    human = invoke(export_cli, ["inspect", tiny_bundle]).output
    assert "DiT" in human and "% of the DiT" in human and "OK" in human
    data = bundle_copy / "predictor.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    result = invoke(export_cli, ["inspect", bundle_copy])
    assert "MISMATCH" in result.output
    assert "predictor.onnx.data" in error_line(result)


@pytest.mark.slow
def test_export_cli_writes_a_bundle_and_guards_the_old_one(tmp_path):
    out = tmp_path / "b"
    args = [
        "onnx",
        "--preset",
        "tiny",
        "--out",
        out,
        "--frames",
        "1:2",
        "--height",
        "4:8",
        "--width",
        "4:8",
        "--batch",
        "1:2",
        "--text-len",
        "1:4",
    ]
    result = invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ranges"]["frames"] == [1, 2, 2] and "random untrained" in manifest["weights"]["source"]
    assert "already exists" in error_line(invoke(export_cli, args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x"], "give exactly one of --preset NAME, --checkpoint DIR or --from diffusers:PATH"),
        (["--preset", "tiny", "--checkpoint", "c", "--out", "x"], "give exactly one"),
        (["--checkpoint", "nope", "--out", "x"], "config.json is missing"),
        (["--preset", "tiny", "--out", "x", "--height", "3:8"], "multiples of the patch size 2"),
        (["--preset", "tiny", "--out", "x", "--frames", "a:b"], "expected MIN:MAX"),
    ],
)
def test_export_user_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke(export_cli, ["onnx", *args]))
    assert not list(tmp_path.iterdir())
