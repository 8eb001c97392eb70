"""Calibration on real sampling runs: the calibration set, FP8 calibration with the sensitivity
rule, the anchor-schedule search, and the validation gate (tiny model, ONNX Runtime CPU)."""

import json
import shutil

import numpy as np
import onnx
import pytest

from disca.bundle import Bundle
from disca.calibration.dataset import calibration_set, read_prompts, sample_all
from disca.calibration.fp8 import calibrate_fp8
from disca.calibration.schedule_search import Point, greedy_curve, refine, warmup_anchors
from disca.cli.export import main as export_cli
from disca.cli.run import main as run_cli
from disca.errors import ConfigError
from disca.metrics import psnr
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.schedule import uniform_anchors
from tests.test_cli import error_line, invoke

PROMPTS = ["a red circle", "the blue square moving up"]


def test_calibration_set_and_prompt_files(tiny_bundle, prompt_file, tmp_path):
    b = Bundle.open(tiny_bundle)
    assert read_prompts(prompt_file) == PROMPTS
    cal = calibration_set(b, PROMPTS, n=5)
    assert cal.prompts == [PROMPTS[i % 2] for i in range(5)]
    r = b.ranges
    assert cal.noise.shape == (5, b.channels, r.frames[1], r.height[1], r.width[1])
    # Batches group equal text lengths (3 and 5 words here) and cover every sample once.
    seen = sorted(i for idx, _, _ in cal.batches(2) for i in idx)
    assert seen == list(range(5))
    with pytest.raises(ConfigError, match="has no built-in prompt set: pass --prompts FILE"):
        calibration_set(b, None)
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="is a directory; give a text file"):
        read_prompts(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="has no prompts"):
        read_prompts(tmp_path / "empty.txt")


def _quantized(bundle_dir, graph):
    model = onnx.load(str(Bundle.open(bundle_dir).graph_path(graph, "fp8")), load_external_data=False)
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_fp8_calibration_writes_variants_and_applies_the_sensitivity_rule(bundle_copy):
    cal = calibration_set(Bundle.open(bundle_copy), PROMPTS, n=2)
    report = calibrate_fp8(bundle_copy, cal, min_cosine=0.0, keep_fp16={"dit.blocks.1.linear2"}, sensitivity_samples=4)
    b = Bundle.open(bundle_copy, verify=True)  # new files hashed into the manifest
    assert report.recorded["full"] == 2 * (20 + 8) and report.recorded["predictor"] == 2 * 12  # default schedule
    kept = [x.module for x in report.kept_fp16()]
    assert kept == ["dit.blocks.1.linear2"]  # forced; everything else passes a zero threshold
    assert _quantized(bundle_copy, "full") == 3 and _quantized(bundle_copy, "predictor") == 4
    variant = b.manifest["graphs"]["full"]["variants"]["fp8"]
    assert "disca-export calibrate" in variant["produced_by"] and len(variant["calibration"]) == 4
    assert all(0.9 < x.cosine <= 1.0 + 1e-9 and x.amax > 0 for x in report.layers)
    assert not [p for p in bundle_copy.iterdir() if p.name.startswith(".calibrate")]

    # A threshold no layer can meet keeps them all FP16; --force-fp8 overrides it for one.
    report = calibrate_fp8(bundle_copy, cal, min_cosine=1.01, force_fp8={"predictor.fusion.0"}, sensitivity_samples=4)
    assert [x.module for x in report.layers if x.fp8] == ["predictor.fusion.0"]
    assert _quantized(bundle_copy, "full") == 0 and _quantized(bundle_copy, "predictor") == 1

    # A layer name that is in neither graph (a typo) is refused before any work, the bundle untouched.
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="--keep-fp16: no layer is named 'dit.blocks.1.linear9'"):
        calibrate_fp8(bundle_copy, cal, keep_fp16={"dit.blocks.1.linear2", "dit.blocks.1.linear9"})
    assert (bundle_copy / "manifest.json").read_bytes() == before


def test_greedy_schedule_search_takes_the_best_step_each_round(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    cal = calibration_set(b, PROMPTS[:1], n=2)
    steps, shift = 5, 3.0
    with OnnxRuntimeBackend(b) as backend:
        ref, curve = greedy_curve(backend, cal, steps=steps, shift=shift)
        # Round 2 by brute force: the chosen second anchor beats every other candidate.
        scores = {s: psnr(sample_all(backend, cal, steps=steps, shift=shift, anchors=[0, s]), ref) for s in range(1, 5)}
    assert [p.k for p in curve] == [1, 2, 3, 4, 5]
    assert curve[1].anchors == [0, max(scores, key=scores.get)]
    assert curve[1].psnr_db == pytest.approx(max(scores.values()))
    assert all(set(a.anchors) < set(b.anchors) for a, b in zip(curve, curve[1:]))  # nested
    assert curve[-1].psnr_db == float("inf")  # every step full: exactly all-full


def test_refine_moves_anchors_to_a_better_list():
    # A quality with a known optimum per budget: the closer each anchor to an evenly spaced target, the better.
    def quality(anchors):
        calls.append(anchors)
        target = targets.get(len(anchors), [0] * len(anchors))
        return -float(np.abs(np.array(anchors) - np.array(target)).sum())

    calls, targets = [], {4: [0, 5, 10, 15], 3: [0, 6, 12]}
    greedy = [Point(k, list(range(k)), quality(list(range(k)))) for k in range(1, 6)]  # crowded at the start
    curve = refine(quality, greedy, steps=20, ks=[3, 4], rounds=50)
    assert curve[3].anchors == [0, 5, 10, 15] and curve[3].psnr_db == 0.0  # from the even list, 0 moves
    assert curve[2].anchors == [0, 6, 12] and curve[2].psnr_db == 0.0  # from [0, 7, 13] by local moves
    assert curve[4] == greedy[4]  # budgets not asked for are left as they were
    assert len(calls) == len({tuple(c) for c in calls})  # no list evaluated twice
    assert refine(quality, greedy, steps=20, ks=[3], rounds=0)[2].anchors == [0, 7, 13]  # start only, no moves
    assert warmup_anchors(20, 8) == [0, 1, 4, 7, 10, 13, 16, 19] and warmup_anchors(20, 1) == [0]


def test_uniform_anchors():
    assert uniform_anchors(20, 8) == [0, 2, 5, 8, 10, 12, 15, 18]
    assert uniform_anchors(10, 10) == list(range(10))
    assert uniform_anchors(20, 1) == [0]


def test_schedule_cli_writes_the_default_schedule_and_a_report(bundle_copy, prompt_file, tmp_path):
    report = tmp_path / "rep"
    args = ["schedule", bundle_copy, "--steps", "4", "--anchors", "2", "--prompts", prompt_file, "--samples", "2"]
    result = invoke(export_cli, [*args, "--report", report, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {p.name for p in report.iterdir()} == {"schedule_search.json", "schedule_search.md", "schedule_search.png"}
    assert Bundle.open(bundle_copy).schedule.anchors == out["chosen"] == out["curve"][1]["anchors"]
    assert Bundle.open(bundle_copy).schedule.steps == 4
    lists = Bundle.open(bundle_copy).manifest["anchor_lists"]
    assert lists["steps"] == 4 and lists["lists"] == {str(p["k"]): p["anchors"] for p in out["curve"]}
    # `disca-run --anchors K` runs the searched list of K
    run = invoke(run_cli, [bundle_copy, "--prompt", "a red circle", "--steps", "4", "--anchors", "3", "--json"])
    assert json.loads(run.output)["anchors"] == lists["lists"]["3"]
    line = error_line(invoke(export_cli, [*args[:5], "9", "--prompts", prompt_file]))
    assert "--anchors must be between 1 and --steps (4)" in line


def test_schedule_gaps_only_takes_the_lists_of_another_bundle(bundle_copy, prompt_file, tmp_path):
    """A predictor fine-tuned on a bundle's searched lists is exported into a new bundle: --lists-from carries
    those lists (and the default schedule) over, and --gaps-only --on-runs redoes the per-gap choice on them."""
    other = tmp_path / "other"
    shutil.copytree(bundle_copy, other)
    m = json.loads((other / "manifest.json").read_text())
    shift = m["schedule"]["shift"]
    m["anchor_lists"] = {"steps": 4, "shift": shift, "samples": 2, "lists": {"2": [0, 2], "3": [0, 1, 3]}}
    m["schedule"] = {"steps": 4, "shift": shift, "anchors": [0, 2], "searched": True}
    (other / "manifest.json").write_text(json.dumps(m))
    args = ["schedule", bundle_copy, "--prompts", prompt_file, "--samples", "2", "--report", tmp_path / "rep"]
    assert "goes with --gaps-only" in error_line(invoke(export_cli, [*args, "--lists-from", other]))
    line = error_line(invoke(export_cli, [*args, "--steps", "5", "--gaps-only", "--lists-from", other]))
    assert "has no anchor lists searched for 5 steps" in line
    before = (bundle_copy / "manifest.json").read_text()
    m["model"]["dit"]["rope_theta"] = 128.0  # another model's lists do not apply
    (tmp_path / "another").mkdir()
    (tmp_path / "another" / "manifest.json").write_text(json.dumps(m))
    shutil.copytree(other, tmp_path / "another", dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
    line = error_line(invoke(export_cli, [*args, "--steps", "4", "--gaps-only", "--lists-from", tmp_path / "another"]))
    assert "holds another DiT" in line and (bundle_copy / "manifest.json").read_text() == before
    result = invoke(export_cli, [*args, "--steps", "4", "--gaps-only", "--on-runs", "--lists-from", other])
    assert result.exit_code == 0, result.output
    got = Bundle.open(bundle_copy).manifest
    assert got["anchor_lists"] == m["anchor_lists"] and got["schedule"] == m["schedule"]
    assert got["cached_steps"]["steps"] == 4


def test_validate_gate_passes_and_fails_on_the_given_thresholds(bundle_copy, prompt_file):
    args = ["validate", bundle_copy, "--prompts", prompt_file, "--samples", "2", "--backend", "onnxruntime,torch"]
    result = invoke(export_cli, [*args, "--min-psnr", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == "PyTorch fp32" and report["ok"]
    assert report["thresholds"] == {"min_psnr_db": 0.0, "max_adherence_drop": 0.02}
    combos = {(p["backend"], p["precision"]) for p in report["parity"]}
    assert combos == {("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "fp8"), ("torch", "fp32")}
    assert len(report["end_to_end"]) == 3
    fp32 = [p for p in report["parity"] if p["precision"] == "fp32"]
    assert all(p["rel_l2"] < 1e-4 for p in fp32)

    # thresholds stored in the bundle can make the gate stricter: no DisCa run is within 500 dB of all-full
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["thresholds"] = {"min_psnr_db": 500.0}
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert "failed validation" in error_line(invoke(export_cli, [*args, "--min-psnr", "0"]))
    np.testing.assert_equal(Bundle.open(bundle_copy).manifest["thresholds"], {"min_psnr_db": 500.0})


def test_validate_fails_when_a_backend_asked_for_checked_nothing(tiny_bundle_plain, prompt_file):
    args = ["validate", tiny_bundle_plain, "--prompts", prompt_file, "--samples", "1"]
    assert "unknown backend 'onnxrutime'" in error_line(invoke(export_cli, [*args, "--backend", "onnxrutime"]))
    assert "no backend" in error_line(invoke(export_cli, [*args, "--backend", ","]))
    result = invoke(export_cli, [*args, "--backend", "onnxruntime,torch", "--min-psnr", "0", "--json"])
    report = json.loads(result.stdout)  # the bundle has no PyTorch weights: torch checked nothing
    assert report["unchecked"] == ["torch"] and not report["ok"]
    assert any(p["backend"] == "torch" and "no PyTorch weights" in p["skipped"] for p in report["parity"])
    assert "was not validated on torch" in error_line(result)


def test_validate_thresholds_stored_in_a_bundle_only_tighten_the_gate(bundle_copy):
    from disca.calibration.validation import DEFAULT_THRESHOLDS, thresholds

    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["thresholds"] = {"min_psnr_db": -1e300, "max_adherence_drop": 1e300}  # a bundle that waves itself through
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert thresholds(Bundle.open(bundle_copy)) == DEFAULT_THRESHOLDS
    assert thresholds(Bundle.open(bundle_copy), min_psnr_db=10.0) == {**DEFAULT_THRESHOLDS, "min_psnr_db": 10.0}
    m["thresholds"] = {"min_psnr_db": 40.0, "max_adherence_drop": 0.0}
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert thresholds(Bundle.open(bundle_copy), min_psnr_db=10.0, max_adherence_drop=0.5) == {
        "min_psnr_db": 40.0,
        "max_adherence_drop": 0.0,
    }
