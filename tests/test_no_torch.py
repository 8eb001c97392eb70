"""The deploy path (bundle + ONNX Runtime + CLI) must import and run with torch NOT installed, and so
must the deploy commands of disca-export (inspect, validate, calibrate, schedule without its plot)."""

import json
import subprocess
import sys

BLOCK = """
import importlib.abc, sys
BLOCKED = {"torch", "onnx", "onnxscript", "safetensors", "tensorrt"}
BLOCKED = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else BLOCKED
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str, blocked: str | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where the `blocked` packages (comma-separated; default: torch, onnx,
    onnxscript, safetensors, tensorrt) cannot be imported."""
    args = [sys.executable, "-c", BLOCK + code, *([blocked] if blocked else [])]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_onnxruntime_path_runs_without_torch(tiny_bundle, tmp_path):
    out = tmp_path / "clip.gif"
    code = f"""
import disca, disca.runtime
from disca.cli.run import main
try:
    main([{str(tiny_bundle)!r}, "--prompt", "a red circle", "--steps", "3", "--schedule", "0",
          "--frames", "2", "--height", "8", "--width", "8", "--json", "--out", {str(out)!r}])
except SystemExit as e:
    assert e.code in (0, None), e.code
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(m for m in sys.modules if "torch" in m)
"""
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["full_calls"] == 1
    assert out.stat().st_size > 0


def test_inspect_runs_without_torch_and_torch_backend_names_the_extra(tiny_bundle):
    code = f"""
from disca.cli.export import main as export_main
from disca.cli.run import main as run_main
for cli, args in ((export_main, ["inspect", {str(tiny_bundle)!r}, "--json"]),
                  (run_main, [{str(tiny_bundle)!r}, "--prompt", "a", "--backend", "torch"])):
    try:
        cli(args)
    except SystemExit as e:
        print("EXIT", e.code)
"""
    proc = run_blocked(code)
    assert "EXIT 0" in proc.stdout and "EXIT 1" in proc.stdout, proc.stdout + proc.stderr
    assert "Error: the torch backend needs PyTorch: pip install 'disca[torch]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_calibrate_and_schedule_run_in_the_base_install(bundle_copy, prompt_file, tmp_path):
    """The base install has onnx (graph edits of calibrate) but neither torch nor matplotlib."""
    report = tmp_path / "report"
    cal = ["--prompts", str(prompt_file), "--samples", "1"]
    code = f"""
import json
from disca.cli.export import main
bundle = {str(bundle_copy)!r}
for args in (["validate", bundle, *{cal!r}, "--min-psnr", "0", "--json"],  # an untrained model is far from all-full
             ["calibrate", bundle, *{cal!r}, "--json"],
             ["schedule", bundle, "--steps", "4", "--anchors", "2", *{cal!r}, "--report", {str(report)!r}]):
    try:
        main(args)
    except SystemExit as e:
        print("EXIT", args[0], e.code)
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(m for m in sys.modules if "torch" in m)
"""
    proc = run_blocked(code, blocked="torch,onnxscript,safetensors,tensorrt,matplotlib")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    for cmd in ("validate", "calibrate", "schedule"):
        assert f"EXIT {cmd} 0" in proc.stdout, proc.stdout + proc.stderr
    validated = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.index("\n}\n") + 2])
    assert validated["reference"].startswith("ONNX Runtime CPU, fp32 graph") and validated["ok"]
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest["graphs"]["full"]["variants"]["fp8"]["calibration"]  # calibrate rewrote the fp8 variant
    assert manifest["schedule"]["steps"] == 4
    # schedule says up front that the plot is left out, and writes the rest of its report
    assert "no PNG: matplotlib is not installed, pip install 'disca[plot]'" in proc.stderr + proc.stdout
    assert {p.name for p in report.iterdir()} == {"schedule_search.json", "schedule_search.md"}
