"""The deploy path (bundle + ONNX Runtime + CLI) must import and run with torch NOT installed."""

import json
import subprocess
import sys

BLOCK = """
import importlib.abc, sys
BLOCKED = {"torch", "onnx", "onnxscript", "safetensors", "tensorrt"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


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
