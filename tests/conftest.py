"""Shared fixtures. A dynamo export costs seconds even for a tiny model: export once per session."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="model/export tests need the torch extra")

from disca.models import build, preset, randomize_  # noqa: E402

# Small ranges keep validation and runtime tests fast; still two distinct shapes per dim.
TINY_RANGES = {
    "batch": [1, 1, 3],
    "frames": [1, 2, 4],
    "height": [4, 8, 12],
    "width": [4, 8, 12],
    "text_len": [1, 4, 8],
}


@pytest.fixture(scope="session")
def tiny_ranges():
    from disca.spec import ShapeRanges

    return ShapeRanges(**TINY_RANGES)


@pytest.fixture(scope="session")
def tiny_model():
    """(cfg, dit, predictor) of the tiny preset with random (non-zero) weights."""
    cfg = preset("tiny")
    dit, predictor = build(cfg)
    randomize_(dit, 0)
    randomize_(predictor, 1)
    return cfg, dit.eval(), predictor.eval()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tiny_ranges, tmp_path_factory):
    """A bundle of the tiny model, exported once (opset 23, with weights, fp32 + fp16 + fp8 variants)."""
    from disca.build import build_bundle

    cfg, dit, predictor = tiny_model
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(
        cfg, dit, predictor, out, ranges=tiny_ranges, precisions=("fp32", "fp16", "fp8"), weights_note="tests"
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle_plain(tiny_model, tiny_ranges, tmp_path_factory):
    """A second export of the tiny model, shared by the tests of each of its differences from `tiny_bundle`:
    opset 20 (decomposed attention), fp32 only, no PyTorch weights."""
    from disca.build import build_bundle

    cfg, dit, predictor = tiny_model
    out = tmp_path_factory.mktemp("bundles") / "tiny-plain"
    return build_bundle(cfg, dit, predictor, out, opset=20, ranges=tiny_ranges, include_weights=False)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may corrupt."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture
def prompt_file(tmp_path):
    """A prompt file with a comment and a blank line, as users write them."""
    p = tmp_path / "prompts.txt"
    p.write_text("# calibration prompts\na red circle\n\nthe blue square moving up\n")
    return p
