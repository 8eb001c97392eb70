"""`disca-serve`: a real Triton Inference Server, started in process through NVIDIA PyTriton,
serving the model `disca` (see protocol.py) from a bundle.

Triton owns the protocol (HTTP / gRPC), the queue, the dynamic batcher, health and metrics;
each model instance is a `ClipRunner` on its own `Pipeline`. The server is ready only after
every instance loaded its sessions / engines and ran one warm-up clip.
"""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
from dataclasses import dataclass

from disca.errors import BackendUnavailable
from disca.serving.batching import ClipRunner, load_runner
from disca.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS

log = logging.getLogger("disca.serving")


@dataclass
class ServeOptions:
    bundle: str
    backend: str = "onnxruntime"
    backend_options: dict | None = None
    instances: int = 1
    max_batch: int | None = None  # requests per Triton batch; None: the bundle's max batch
    max_queue_delay_ms: float = 2.0
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 30  # how long a stop waits for the requests in flight


def python_library_env() -> None:
    """Put this interpreter's own libpython first on LD_LIBRARY_PATH for the tritonserver child.

    The Python-backend stub links libpython3.X by soname; on a Python that is not the system build
    (pyenv, conda) it would pick the system's and die at model load mixing two builds (DEPLOY-NOTES)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def _pytriton():
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ModuleNotFoundError:
        raise BackendUnavailable("serving needs NVIDIA PyTriton: pip install 'disca[serve]'") from None
    return DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig


@dataclass
class RunningServer:
    triton: object  # pytriton.triton.Triton
    runners: list[ClipRunner]

    def stop(self) -> None:
        """Drain the requests in flight (up to exit_timeout_s), stop Triton, close the sessions."""
        self.triton.stop()
        for runner in self.runners:
            runner.pipe.close()


def start(opts: ServeOptions) -> RunningServer:
    """Load and warm up the instances, then start Triton and load the model: ready on
    /v2/health/ready when this returns."""
    DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig = _pytriton()
    runners = [load_runner(opts.bundle, opts.backend, opts.backend_options) for _ in range(opts.instances)]
    max_batch = opts.max_batch or runners[0].max_batch
    python_library_env()
    config = TritonConfig(
        http_address=opts.host,
        http_port=opts.http_port,
        grpc_address=opts.host,
        grpc_port=opts.grpc_port,
        metrics_address=opts.host,
        metrics_port=opts.metrics_port,
        exit_timeout_secs=opts.exit_timeout_s,
    )
    triton = Triton(config=config)
    server = RunningServer(triton, runners)
    try:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=runners,  # one callable per instance: Triton runs them concurrently
            inputs=[Tensor(name=t.name, dtype=t.numpy_dtype, shape=t.dims, optional=t.optional) for t in INPUTS],
            outputs=[Tensor(name=t.name, dtype=t.numpy_dtype, shape=t.dims) for t in OUTPUTS],
            config=ModelConfig(
                max_batch_size=max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(opts.max_queue_delay_ms * 1000)),
            ),
            strict=True,
        )
        triton.run()
    except BaseException:
        server.stop()
        raise
    return server


def serve(opts: ServeOptions, on_ready=None) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain the requests in flight and return."""

    def _interrupt(signum, frame):
        raise KeyboardInterrupt  # PyTriton's serve loop stops on it, draining the requests in flight

    previous = signal.signal(signal.SIGTERM, _interrupt)  # before start: a SIGTERM while loading also exits cleanly
    server = None
    try:
        server = start(opts)
        if on_ready is not None:
            on_ready()
        server.triton.serve()  # returns after a stop (it catches the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.stop()
