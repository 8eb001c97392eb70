"""Serving on Triton: a real PyTriton server (once per module) and the `tritonserver` binary on a
repository from `disca-export triton`, both on loopback and free ports, with the shipped demo
bundle on ONNX Runtime CPU. Every answer is compared with an in-process Pipeline run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the serve extra: pip install 'disca[serve]'")

from disca.client import Client, ServerError, request_arrays  # noqa: E402
from disca.errors import DiscaError  # noqa: E402
from disca.runtime.pipeline import DEMO_BUNDLE, Pipeline  # noqa: E402
from disca.serving.batching import ClipRunner  # noqa: E402
from disca.serving.server import ServeOptions, start  # noqa: E402

pytestmark = pytest.mark.serve

# The graphs' batch axis is dynamic: a clip denoised in a batch of 4 may differ from the same clip alone
# by float32 rounding in batched kernels. Measured here (ONNX Runtime CPU): exactly 0; the tolerance
# leaves room for other kernels, on clips of magnitude ~1.6.
BATCH_ATOL = 1e-4
PROMPT = "a red circle moving left"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(name: str) -> list[int]:
    """Live child processes of this test process with this command name."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and comm == name and fields[1].split()[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def pipe():
    with Pipeline.load(DEMO_BUNDLE) as p:
        yield p


@pytest.fixture(scope="module")
def server():
    opts = ServeOptions(
        str(DEMO_BUNDLE), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), exit_timeout_s=5
    )
    running = start(opts)
    yield opts
    running.stop()
    deadline = time.time() + 10
    while children("tritonserver") and time.time() < deadline:
        time.sleep(0.2)
    assert not children("tritonserver"), "tritonserver outlived the stop"


@pytest.fixture(scope="module")
def http(server):
    with Client(f"127.0.0.1:{server.http_port}") as c:
        yield c


def test_prompt_over_http_and_grpc_equals_pipeline(server, http, pipe):
    want = pipe.generate(PROMPT, seed=3)
    assert http.ready()
    got = http.generate(PROMPT, seed=3)
    np.testing.assert_allclose(got.video, want.video, atol=BATCH_ATOL, rtol=0)
    assert got.anchors == want.anchors and got.stats["full_calls"] == want.stats.full_calls
    with Client(f"127.0.0.1:{server.grpc_port}", grpc=True) as grpc:
        np.testing.assert_allclose(grpc.generate(PROMPT, seed=3).video, want.video, atol=BATCH_ATOL, rtol=0)


def test_text_embeddings_with_schedule_and_shape(http, pipe):
    text = np.random.default_rng(0).standard_normal((5, pipe.bundle.text_dim)).astype(np.float32)
    options = dict(steps=8, frames=4, height=16, width=24)
    want = pipe.generate(text_embeddings=text, seed=7, anchors=[0, 2, 5], **options)
    got = http.generate(text_embeddings=text, seed=7, schedule="0,2,5", **options)
    assert got.video.shape == (1, 3, 4, 16, 24)
    np.testing.assert_allclose(got.video, want.video, atol=BATCH_ATOL, rtol=0)
    budget = http.generate(PROMPT, anchors=5)
    assert budget.anchors == pipe.generate(PROMPT, anchors=5).anchors and len(budget.anchors) == 5


def test_batched_requests_equal_single_runs(pipe):
    """Four compatible requests in one Triton batch are denoised as ONE batch of 4, each from its own
    seed; a fifth of another shape runs as its own batch. Each clip equals the request run alone."""
    runner = ClipRunner(pipe)
    requests = [request_arrays(prompt=p, seed=s) for p, s in [(PROMPT, 0), (PROMPT, 1), ("a blue square moving up", 2)]]
    requests.append(request_arrays(prompt="a green triangle growing bigger", seed=3))  # 5 words, like PROMPT
    requests.insert(2, request_arrays(prompt=PROMPT, seed=4, frames=4))
    responses = runner(requests)
    assert [json.loads(r["stats"][0, 0])["batch"] for r in responses] == [4, 4, 1, 4, 4]
    for inputs, response in zip(requests, responses):
        assert response["error"][0, 0] == b""
        prompt, seed = inputs["prompt"][0, 0].decode(), int(inputs["seed"][0, 0])
        frames = int(inputs["frames"][0, 0]) if "frames" in inputs else None
        alone = pipe.generate(prompt, seed=seed, frames=frames).video
        np.testing.assert_allclose(response["video"], alone, atol=BATCH_ATOL, rtol=0)
    assert np.abs(responses[0]["video"] - responses[1]["video"]).max() > 0.1  # the seeds differ


def test_concurrent_requests_are_batched_by_triton(server, pipe):
    seeds = list(range(6))
    results = {}

    def send(seed):
        with Client(f"127.0.0.1:{server.http_port}") as c:
            results[seed] = c.generate(PROMPT, seed=seed)

    threads = [threading.Thread(target=send, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r.stats["triton_batch"] for r in results.values()) > 1  # queued while the first one ran
    for seed in (0, 5):
        np.testing.assert_allclose(results[seed].video, pipe.generate(PROMPT, seed=seed).video, atol=BATCH_ATOL, rtol=0)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(prompt="a purple circle"), "unknown word 'purple'"),
        (dict(text_embeddings=np.zeros((4, 16), np.float32)), "text_embeddings must be [L, 32]"),
        (dict(prompt=PROMPT, frames=64), "frames=64 is outside the bundle's range 2..16"),
        (dict(prompt=PROMPT, frames=3), "frames=3 is not a multiple of the patch size 2"),
        (dict(prompt=PROMPT, schedule="0,x,5"), "schedule must be comma-separated step numbers"),
        (dict(prompt=PROMPT, schedule="2,5"), "step 0 must be an anchor"),
        (dict(prompt=PROMPT, policy="magic"), "unknown policy 'magic'"),
        (dict(prompt=PROMPT, threshold=0.3), "'threshold' applies to"),  # the default policy, disca, has none
        (dict(prompt=PROMPT, policy="teacache", anchors=5), "teacache chooses its anchors online"),
        (dict(prompt=PROMPT, policy="reuse", schedule="full"), "policy reuse would do nothing"),
        (dict(prompt=PROMPT, steps=10), "the bundle's default anchors are for 20 steps"),
        (dict(prompt=PROMPT, steps=0, schedule="0"), "steps must be between 1 and 1000, got 0"),
        (dict(prompt=PROMPT, text_embeddings=np.zeros((4, 32), np.float32)), "give exactly one of"),
    ],
)
def test_bad_request_gets_a_clear_error(http, inputs, message):
    with pytest.raises(ServerError) as e:
        http.infer(request_arrays(**inputs))
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)


def test_values_the_client_refuses_reach_the_server_cleanly_too(server, http):
    """A negative seed or a zero-length tensor sent as raw arrays (request_arrays refuses both) gets one line:
    the seed from disca, the empty tensor (which PyTriton fails on before disca sees it) cut from a traceback."""
    with pytest.raises(ServerError, match="seed must be a non-negative integer"):
        http.infer({**request_arrays(prompt=PROMPT), "seed": np.array([[-1]], np.int64)})
    with Client(f"127.0.0.1:{server.grpc_port}", grpc=True) as grpc:
        for client in (http, grpc):
            for shape in ((1, 0, 32), (1, 4, 0)):
                with pytest.raises(ServerError) as e:
                    client.infer({"text_embeddings": np.zeros(shape, np.float32)})
                assert "Traceback" not in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_client_refuses_values_the_wire_cannot_carry(tmp_path):
    """Checked before anything is sent (no server runs on the port): an INT64 seed from 2**63 overflowed with a
    traceback, an INT32 width of 2**31 wrapped negative, an empty embedding array got the server's traceback."""
    from disca.cli.run import main

    for values, message in [
        (dict(seed=2**63), "seed must be an integer from 0 to 9223372036854775807"),
        (dict(seed=-1), "seed must be an integer from 0 to"),
        (
            dict(width=2**31),
            "width must be an integer from -2147483648 to 2147483647 (the model's INT32 input), got 2147483648",
        ),
        (dict(steps=2.5), "steps must be a whole number"),
        (dict(threshold=1e39), "threshold must be a finite number"),
        (dict(text_embeddings=np.zeros((0, 32), np.float32)), "text_embeddings must be a non-empty [L, D] array"),
    ]:
        with pytest.raises(DiscaError) as e:
            request_arrays(prompt=PROMPT, **values)
        assert message in str(e.value)
    np.save(tmp_path / "empty.npy", np.zeros((0, 32), np.float32))
    url = ["--server", f"127.0.0.1:{free_port()}"]
    for args, message in [
        (["--prompt", PROMPT, "--seed", str(2**63)], "seed must be an integer from 0 to 9223372036854775807"),
        (["--prompt", PROMPT, "--width", str(2**31)], "got 2147483648"),
        (["--text-embeddings", str(tmp_path / "empty.npy")], "got shape [0, 32]"),
    ]:
        r = CliRunner().invoke(main, [*url, *args])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
        # (the module's server logs through this process's stderr too: count only the error lines)
        assert len([line for line in r.output.splitlines() if line.startswith("Error:")]) == 1


def test_malformed_tensors_are_refused_by_triton(http):
    """Wrong rank / dtype / no input never reach disca: Triton itself answers, naming the problem."""
    with pytest.raises(ServerError, match="text_embeddings"):
        http.infer({"text_embeddings": np.zeros((1, 32), np.float32)})  # rank 1 per request
    with pytest.raises(ServerError, match="seed"):
        http.infer({"prompt": np.array([[PROMPT.encode()]], dtype=np.object_), "seed": np.zeros((1, 1), np.float32)})
    with pytest.raises(ServerError, match="0 inputs"):
        http.infer({})


def test_bad_requests_do_not_fail_their_batch(pipe):
    """A bad request batched with good ones gets its error; the good ones their clips."""
    runner = ClipRunner(pipe)
    requests = [request_arrays(prompt=PROMPT, seed=1), request_arrays(prompt="a purple circle"), request_arrays()]
    good, bad, empty = runner(requests)
    assert good["error"][0, 0] == b"" and b"purple" in bad["error"][0, 0] and b"exactly one" in empty["error"][0, 0]
    np.testing.assert_allclose(good["video"], pipe.generate(PROMPT, seed=1).video, atol=BATCH_ATOL, rtol=0)


def test_disca_run_server_writes_the_same_outputs(server, pipe, tmp_path):
    from disca.cli.run import main

    out = tmp_path / "clip.npy"
    args = ["--server", f"127.0.0.1:{server.grpc_port}", "--grpc", "--prompt", PROMPT, "--seed", "2", "--json"]
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["out"] == str(out) and stats["anchors"] == pipe.bundle.schedule.anchors
    np.testing.assert_allclose(np.load(out), pipe.generate(PROMPT, seed=2).video, atol=BATCH_ATOL, rtol=0)
    r = CliRunner().invoke(main, ["--server", f"127.0.0.1:{server.http_port}", "--prompt", "a purple circle"])
    assert r.exit_code == 1 and "Error: unknown word 'purple'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["--server", f"127.0.0.1:{free_port()}", "--prompt", PROMPT])
    assert r.exit_code == 1 and "Error:" in r.output


def _shipped_tritonserver(repo: Path, work: Path, ports: tuple[int, int, int]):
    """argv and env to run the tritonserver binary that nvidia-pytriton ships, with its Python backend."""
    import pytriton
    from pytriton.utils.distribution import get_libs_path, get_stub_path

    root = Path(pytriton.__file__).parent / "tritonserver"
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(root / "backends" / "python" / name, backend / name)
    shutil.copy(
        get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}"), backend / "triton_python_backend_stub"
    )
    env = dict(os.environ)
    # this interpreter's libpython first (see DEPLOY-NOTES), and its environment's python on PATH for the stub
    env["LD_LIBRARY_PATH"] = ":".join([sysconfig.get_config_var("LIBDIR"), str(get_libs_path())])
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    http, grpc, metrics = ports
    argv = [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={work / 'backends'}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--exit-timeout-secs=5",
    ]
    return argv, env


def test_tritonserver_serves_an_exported_repository(pipe, tmp_path):
    from disca.cli.export import main

    repo = tmp_path / "repo"
    r = CliRunner().invoke(main, ["triton", str(DEMO_BUNDLE), "--out", str(repo), "--kind", "cpu", "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    config = (repo / "disca" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and "kind: KIND_CPU" in config and 'backend: "python"' in config
    assert (repo / "disca" / "1" / "bundle" / "manifest.json").is_file()
    r = CliRunner().invoke(main, ["triton", str(DEMO_BUNDLE), "--out", str(repo), "--kind", "cpu"])
    assert r.exit_code == 1 and "already exists" in r.output  # nothing overwritten without --overwrite

    ports = (free_port(), free_port(), free_port())
    argv, env = _shipped_tritonserver(repo, tmp_path / "triton", ports)
    log = (tmp_path / "tritonserver.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(f"127.0.0.1:{ports[0]}") as client:
            deadline = time.time() + 60
            while not client.ready() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert client.ready(), (tmp_path / "tritonserver.log").read_text()[-3000:]
            got = client.generate(PROMPT, seed=5)
            np.testing.assert_allclose(got.video, pipe.generate(PROMPT, seed=5).video, atol=BATCH_ATOL, rtol=0)
            with pytest.raises(ServerError, match="frames=64 is outside"):
                client.generate(PROMPT, frames=64)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()


def test_serve_cli_drains_in_flight_requests_on_sigterm(pipe):
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "disca.cli.serve", "--max-queue-delay-ms", "0"]
    argv += [f"--{k}-port={p}" for k, p in zip(("http", "grpc", "metrics"), ports)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"127.0.0.1:{ports[0]}") as client:
            deadline = time.time() + 60
            while not client.ready() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert client.ready()
        result = {}

        def send():  # a long clip: still running when SIGTERM comes
            with Client(f"127.0.0.1:{ports[0]}") as c:
                result["clip"] = c.generate(PROMPT, seed=4, frames=8, height=48, width=48)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        sender.join(60)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    want = pipe.generate(PROMPT, seed=4, frames=8, height=48, width=48).video
    np.testing.assert_allclose(result["clip"].video, want, atol=BATCH_ATOL, rtol=0)
    assert "disca-serve: stopped" in proc.stderr.read()


def _export(*args):
    from disca.cli.export import main

    return CliRunner().invoke(main, ["triton", *map(str, args)])


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_export_triton_overwrites_only_a_repository_it_wrote(tmp_path):
    """--overwrite swapped in a repository for whatever was at --out: a user's directory, a file, the bundle."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)  # a copy: a regression must not delete the shipped demo
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    before = _tree(tmp_path)
    for out, message in [
        (user, "is not one (it holds notes.txt)"),
        (plain, "it is a file"),
        (bundle, "is the bundle itself"),
        (bundle / "repo", "is inside the bundle"),
        (tmp_path, "holds the bundle"),
    ]:
        r = _export(bundle, "--out", out, "--kind", "cpu", "--overwrite")
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert _tree(tmp_path) == before and not list(tmp_path.glob(".*"))  # nothing lost, no temporaries left

    repo = tmp_path / "repo"
    assert _export(bundle, "--out", repo, "--kind", "cpu").exit_code == 0
    (repo / "disca" / "1" / "__pycache__").mkdir()  # as the Python backend leaves it: still disca's repository
    r = _export(bundle, "--out", repo, "--kind", "cpu", "--instances", "3", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "count: 3" in (repo / "disca" / "config.pbtxt").read_text()
    (repo / "other_model").mkdir()  # another model someone added: not disca's to delete
    r = _export(bundle, "--out", repo, "--kind", "cpu", "--overwrite")
    assert r.exit_code == 1 and "it holds other_model" in r.output and (repo / "other_model").is_dir()
    assert "count: 3" in (repo / "disca" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-queue-delay-ms", "nan"], "nan is not a finite number"),
        (["--max-queue-delay-ms", "1e300"], "0<=x<=60000"),
        (["--gpus", "-1,0,0"], "expected distinct GPU ids"),
        (["--gpus", "0,1,1"], "expected distinct GPU ids"),
        (["--instances", "100000000"], "1<=x<=128"),
        (["--backend", "tensorrt", "--kind", "cpu"], "TensorRT engines run on a GPU"),
    ],
)
def test_export_triton_refuses_bad_options(tmp_path, args, message):
    r = _export(DEMO_BUNDLE, "--out", tmp_path / "repo", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "repo").exists()


def test_write_repository_checks_what_the_cli_checks(tmp_path):
    from disca.serving.repository import write_repository

    for kwargs, message in [
        (dict(max_queue_delay_ms=float("nan")), "--max-queue-delay-ms must be between 0 and 60000"),
        (dict(gpus=[0, 0]), "lists a GPU twice"),
        (dict(gpus=[-1]), "--gpus must list GPU ids"),
        (dict(instances=10**8), "--instances must be between 1 and 128"),
        (dict(backend="tensorrt", kind="cpu"), "TensorRT engines run on a GPU"),
    ]:
        with pytest.raises(DiscaError) as e:
            write_repository(DEMO_BUNDLE, tmp_path / "repo", **kwargs)
        assert message in str(e.value)
    assert not (tmp_path / "repo").exists()


@pytest.fixture
def listening():
    """A port some other server holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_refuses_bad_startup_options_in_one_line(listening):
    """Each used to hang ~120 s or end in a PyTriton / tritonserver traceback or usage text."""
    from disca.cli.serve import main

    a, b, c = free_port(), free_port(), free_port()
    running = set(children("tritonserver"))  # the module's server, if it runs
    cases = [
        ([f"--http-port={listening}", f"--grpc-port={b}", f"--metrics-port={c}"], f"--http-port {listening} is in use"),
        ([f"--http-port={a}", f"--grpc-port={listening}", f"--metrics-port={c}"], f"--grpc-port {listening} is in use"),
        ([f"--http-port={a}", f"--grpc-port={a}", f"--metrics-port={c}"], "--http-port and --grpc-port are both"),
        ([f"--http-port={a}", f"--grpc-port={b}", f"--metrics-port={b}"], "--grpc-port and --metrics-port are both"),
        (["--host=192.0.2.1", f"--http-port={a}"], "cannot serve on --host 192.0.2.1"),  # TEST-NET: not this machine
        (["--host=no-such-host.invalid"], "--host 'no-such-host.invalid' is not an address"),
        (["--http-port=-1"], "'--http-port': -1 is not in the range 1<=x<=65535"),
        (["--metrics-port=70000"], "'--metrics-port': 70000 is not in the range"),
        (["--max-queue-delay-ms=nan"], "nan is not a finite number"),
        (["--max-queue-delay-ms=inf"], "inf is not in the range"),
        (["--instances=100000000"], "1<=x<=128"),
        # PyTriton's own startup error (it builds http://::1:PORT, an invalid URL), as one line
        (["--host=::1", f"--http-port={a}", f"--grpc-port={b}", f"--metrics-port={c}"], "::1"),
    ]
    for args, message in cases:
        started = time.time()
        r = CliRunner().invoke(main, args)
        assert r.exit_code in (1, 2) and message in r.output, (args, r.output)
        assert "Traceback" not in r.output and time.time() - started < 30, (args, r.output)
        assert len([line for line in r.output.splitlines() if line.startswith("Error:")]) == 1
    assert set(children("tritonserver")) <= running  # none started, none left behind
