"""The trained demo model that ships inside the package."""

import json

import pytest
from click.testing import CliRunner

from disca.bundle import Bundle
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
    # 12 cached steps: the predictor, and the head on the demo's calibrated one-step gaps
    assert [stats[k] for k in ("full_calls", "predictor_calls", "head_calls", "cached_calls")] == [8, 7, 5, 12]
    assert out.stat().st_size > 0
    result = CliRunner().invoke(run_cli, ["--prompt", "a purple circle moving left"])
    assert result.exit_code == 1 and "unknown word 'purple'" in result.output and "known words: a, red" in result.output
