"""`disca-serve`: a real Triton Inference Server, started in process through NVIDIA PyTriton,
serving the model `disca` (see protocol.py) from a bundle.

Triton owns the protocol (HTTP / gRPC), the queue, the dynamic batcher, health and metrics;
each model instance is a `ClipRunner` on its own `Pipeline`. The server is ready only after
every instance loaded its sessions / engines and ran one warm-up clip.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sysconfig
from dataclasses import dataclass

from disca.errors import BackendUnavailable, DiscaError, InputError
from disca.serving.batching import ClipRunner, load_runner
from disca.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS
from disca.serving.repository import check_batching

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


class StartupError(DiscaError):
    """Triton could not start (the message says why, and how to see its log)."""


def _ports(opts: ServeOptions) -> dict[str, int]:
    return {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port, "--metrics-port": opts.metrics_port}


def check_options(opts: ServeOptions) -> None:
    """Refuse what would make Triton fail to start, before anything loads: ports out of range or shared,
    batching out of bounds."""
    check_batching(opts.instances, opts.max_batch, opts.max_queue_delay_ms)
    seen: dict[int, str] = {}
    for option, port in _ports(opts).items():
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InputError(f"{option} must be a port number between 1 and 65535, got {port!r}")
        if port in seen:
            raise InputError(f"{seen[port]} and {option} are both {port}: each endpoint needs its own port")
        seen[port] = option


def check_ports_free(opts: ServeOptions) -> None:
    """Bind each port on --host as Triton will, so a port in use or an address not on this machine is one
    clear error now (tritonserver would exit, and PyTriton wait two minutes for it, then raise)."""
    try:
        addresses = socket.getaddrinfo(opts.host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {opts.host!r} is not an address or host name this machine can resolve: {e}") from None
    for option, port in _ports(opts).items():
        failure = None
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is no conflict
                try:
                    s.bind((address[0], port, *address[2:]))
                    break
                except OSError as e:
                    if e.errno == errno.EADDRINUSE:
                        raise InputError(
                            f"{option} {port} is in use on {opts.host} (another server?): pick another port"
                        ) from None
                    failure = failure or e
        else:
            if failure is not None:
                why = "it is not an address of this machine" if failure.errno == errno.EADDRNOTAVAIL else failure
                raise InputError(f"cannot serve on --host {opts.host} ({option} {port}): {why}") from None


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
    triton: object  # pytriton.triton.Triton; None until it is created
    runners: list[ClipRunner]

    def stop(self) -> None:
        """Drain the requests in flight (up to exit_timeout_s), stop Triton, close the sessions."""
        if self.triton is not None:
            self.triton.stop()
        for runner in self.runners:
            runner.pipe.close()


def start(opts: ServeOptions) -> RunningServer:
    """Load and warm up the instances, then start Triton and load the model: ready on
    /v2/health/ready when this returns."""
    DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig = _pytriton()
    check_options(opts)
    check_ports_free(opts)  # before the (maybe long) loading: a taken port fails fast
    runners = []
    try:
        for _ in range(opts.instances):
            runners.append(load_runner(opts.bundle, opts.backend, opts.backend_options))
    except BaseException:
        for runner in runners:
            runner.pipe.close()
        raise
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
    server = RunningServer(None, runners)
    try:
        check_ports_free(opts)  # again: one may have been taken while the instances loaded
        server.triton = Triton(config=config)
        server.triton.bind(
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
        server.triton.run()
    except BaseException as e:
        server.stop()
        if isinstance(e, DiscaError) or not _is_startup_failure(e):
            raise
        hint = " (PyTriton takes an IPv4 address or a host name for --host)" if ":" in opts.host else ""
        raise StartupError(
            f"Triton did not start on {opts.host} (HTTP {opts.http_port}, gRPC {opts.grpc_port}, metrics "
            f"{opts.metrics_port}): {type(e).__name__}: {e}{hint}; run with --verbose to see Triton's log"
        ) from None
    return server


def _is_startup_failure(e: BaseException) -> bool:
    """PyTriton's own errors (a bad URL, a model config it refuses) and its wait for a tritonserver that exited."""
    from pytriton.client.exceptions import PyTritonClientError
    from pytriton.exceptions import PyTritonError

    return isinstance(e, PyTritonError | PyTritonClientError | TimeoutError | ConnectionError)


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
