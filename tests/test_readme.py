"""The README's commands and code, and the CLIs' `--help` examples, run as written after the set-up command.

Conventions, in README.md:
- Shell blocks (```bash, ```sh) and Python blocks (```python) run in the order they appear, each in a fresh
  process, all in one temporary working directory (a block may use the files an earlier one wrote), on the
  demo model shipped with disca (`demo`), on the CPU. A block passes when it exits 0 without a traceback.
- `<!-- readme-test: skip (REASON) -->` on the line before a block: the block is not run, and the test
  reports it skipped with REASON. It marks what cannot run here: a GPU or TensorRT, training, diffusers
  weights, bundles that only training makes, and commands that take minutes on a CPU.
- The block after the `ci:test-command` marker is the test command itself: not run.
- A leading `pip install ... &&` is the set-up command, taken as done: the rest of the line runs.
- Fenced blocks without one of those languages (the diagram, the layout) are text.
In `--help`: every line under `Examples:` runs, unless its trailing comment starts with `needs` (what it needs).

`disca-run`, `disca-export`, `disca-bench` and `python` are shims on PATH for this checkout and interpreter,
so the test checks this copy whatever the installed entry points point at.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.*)\)\s*-->")
SETUP = re.compile(r"^pip install [^&]*&&\s*")
CLIS = {
    "disca-run": "disca.cli.run",
    "disca-export": "disca.cli.export",
    "disca-bench": "disca.cli.bench",
    "disca-serve": "disca.cli.serve",
}


def readme_blocks() -> list[tuple[int, str, str, str | None]]:
    """-> (line, language, code, skip reason or None) of every shell and Python block, in order."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        reason = SKIP.search(before)
        reason = reason.group(1) if reason else "the test command itself" if "ci:test-command" in before else None
        if lang in ("bash", "sh", "python"):
            blocks.append((start + 1, lang, "\n".join(lines[start + 1 : end]), reason))
        i = end + 1
    return blocks


def help_examples() -> list[tuple[str, str | None]]:
    """-> (example line, skip reason or None) of every CLI command's --help."""
    import click

    from disca.cli import bench, export, run, serve

    commands = [run.main, bench.main, serve.main, *export.main.commands.values()]
    out = []
    for cmd in commands:
        text = cmd.help or ""
        if "Examples:" not in text:
            continue
        for line in text.split("Examples:", 1)[1].splitlines():
            line = line.strip()
            if not line.startswith("disca-"):
                continue
            code, _, comment = line.partition("  #")
            comment = comment.strip()
            out.append((code.strip(), comment if comment.startswith("needs") else None))
    assert out and isinstance(commands[0], click.Command)
    return out


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict:
    """PATH with shims that run this checkout's CLIs with this interpreter."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, module in CLIS.items():
        shim = bin_dir / name
        shim.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import main\nsys.argv[0] = {name!r}\nmain()\n")
        shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": pythonpath}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def run(code: str, lang: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    if lang == "python":
        args = [sys.executable, "-c", code]
    else:
        args = ["bash", "-euo", "pipefail", "-c", "\n".join(SETUP.sub("", ln) for ln in code.splitlines())]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    out = f"{what}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, out


BLOCKS = readme_blocks()


def test_the_readme_has_the_blocks_this_test_reads():
    langs = [lang for _, lang, _, _ in BLOCKS]
    assert "python" in langs and langs.count("bash") >= 5
    run_here = [b for b in BLOCKS if b[3] is None]
    assert len(run_here) >= 5, "most of the README should run here"
    assert all("bundles/demo" not in code for _, _, code, reason in run_here)  # the shipped demo is `demo`


@pytest.mark.parametrize("line, lang, code, reason", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs_as_written(line, lang, code, reason, shell_env, workdir):
    if reason:
        pytest.skip(f"README.md:{line}: {reason}")
    check(run(code, lang, shell_env, workdir), f"README.md:{line} ({lang}):\n{code}")


EXAMPLES = help_examples()


@pytest.mark.parametrize("example, reason", EXAMPLES, ids=[e for e, _ in EXAMPLES])
def test_help_example_runs_as_written(example, reason, shell_env, tmp_path):
    if reason:
        pytest.skip(f"{example}: {reason}")
    assert shlex.split(example)[0] in CLIS
    check(run(example, "bash", shell_env, tmp_path), example)
