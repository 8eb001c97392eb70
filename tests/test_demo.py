"""The trained demo model that ships inside the package."""

import json

import pytest
from click.testing import CliRunner

from disca.bundle import Bundle, resolve_bundle
from disca.cli.run import main as run_cli
from disca.runtime import demo_bundle
from disca.runtime.pipeline import DEMO_BUNDLE

# Until the trained demo model ships (issue 3), these skip with this reason; shipping it makes them run.
pytestmark = pytest.mark.skipif(
    not (DEMO_BUNDLE / "manifest.json").is_file(), reason="the trained demo bundle has not shipped yet (issue 3)"
)


def test_demo_bundle_is_shipped_small_and_intact():
    path = demo_bundle()
    bundle = Bundle.open(path, verify=True)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= 20 * 2**20
    assert bundle.manifest["text"]["vocab"][0] == "<null>"
    assert bundle.mean_flow


def test_disca_run_without_bundle_uses_the_demo(tmp_path):
    out = tmp_path / "clip.gif"
    args = ["--prompt", "a red circle moving left", "--out", str(out), "--json"]
    result = CliRunner().invoke(run_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    # the default 8 anchors of 20; a cached step runs the head instead of the predictor on the calibrated gaps
    manifest = Bundle.open(demo_bundle()).manifest
    anchors, record = manifest["schedule"]["anchors"], manifest["cached_steps"]
    on_head = {*record["reuse_gaps"], *record["taylor_gaps"]}
    gaps = [s - max(a for a in anchors if a < s) for s in range(20) if s not in anchors]
    head = sum(g in on_head for g in gaps)
    assert len(anchors) == 8 and head < 12  # the shipped demo: gaps of at most 3, all on the predictor
    calls = [stats[k] for k in ("full_calls", "predictor_calls", "head_calls", "cached_calls")]
    assert calls == [8, 12 - head, head, 12]
    assert out.stat().st_size > 0
    result = CliRunner().invoke(run_cli, ["--prompt", "a purple circle moving left"])
    assert result.exit_code == 1 and "unknown word 'purple'" in result.output and "known words: a, red" in result.output


def test_demo_names_the_shipped_bundle_and_a_real_directory_wins(tmp_path, monkeypatch):
    from disca.cli.export import main as export_cli

    monkeypatch.chdir(tmp_path)
    assert resolve_bundle("demo") == DEMO_BUNDLE == demo_bundle()
    result = CliRunner().invoke(export_cli, ["inspect", "demo", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["path"] == str(DEMO_BUNDLE)
    (tmp_path / "demo").mkdir()  # a directory of that name here takes precedence
    result = CliRunner().invoke(run_cli, ["demo", "--prompt", "a red circle"])
    assert result.exit_code == 1 and "Error: demo is not a disca bundle: manifest.json is missing" in result.output
    assert demo_bundle() == DEMO_BUNDLE  # the Python name of the shipped one is unaffected


def test_the_shipped_demo_is_not_written_to():
    from disca.cli.export import main as export_cli

    before = (DEMO_BUNDLE / "manifest.json").read_bytes()
    for args in (["calibrate"], ["schedule"], ["teacache"], ["build", "--precision", "fp16"]):
        result = CliRunner().invoke(export_cli, [args[0], "demo", *args[1:]])
        assert result.exit_code == 1, result.output
        assert "the shipped demo bundle is part of the package and is not modified: copy it first" in result.output
    assert (DEMO_BUNDLE / "manifest.json").read_bytes() == before


def test_input_errors_come_before_any_progress_bar_and_say_what_to_do():
    prompt = "a purple circle moving leftish " + "x " * 5000
    result = CliRunner().invoke(run_cli, ["--prompt", prompt])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "denoising" not in result.output, result.output
    assert lines[0].startswith("Error: unknown words 'purple', 'leftish', 'x' in prompt 'a purple circle")
    assert len(lines[0]) < 400  # the prompt quoted to 80 characters, not 10 KB
    result = CliRunner().invoke(run_cli, ["--prompt", "a red circle", "--precision", "fp16"])
    assert result.exit_code == 1 and "denoising" not in result.output
    assert "has no fp16 variant of the full graph (it has fp32): re-export it with `disca-export onnx" in result.output
