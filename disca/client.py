"""A client of the `disca` model on Triton (`disca-serve`, or `tritonserver` on a repository from
`disca-export triton`), over HTTP or gRPC through NVIDIA's tritonclient.

from disca.client import Client

with Client("localhost:8000") as client:            # Client("localhost:8001", grpc=True)
    result = client.generate("a red circle moving left", seed=0)
    result.video    # (1, C, F, H, W) float32, as Pipeline.generate(...).video
    result.stats    # the server's run statistics (dict), with the batch it ran in
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from disca.errors import BackendUnavailable, DiscaError, InputError
from disca.serving.protocol import INPUT_BY_NAME, MODEL_NAME, TensorDef


class ServerError(DiscaError):
    """The server answered a request with an error (its message names the problem), or could not be reached."""


@dataclass
class RemoteResult:
    video: np.ndarray  # (1, C, F, H, W)
    stats: dict
    anchors: list[int] | None


def _tritonclient(grpc: bool):
    try:
        if grpc:
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype
    except ModuleNotFoundError:
        raise BackendUnavailable("the client needs tritonclient: pip install 'disca[serve]'") from None
    return module, InferenceServerException, np_to_triton_dtype


def _number(name: str, tensor: TensorDef, value):
    """One scalar input, checked against its wire type: numpy would wrap 2**31 into an int32 silently
    (and 2**63 overflow with a traceback), and round 1e39 to an FP32 inf."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iufO":
        raise InputError(f"{name} must be one number, got {value!r}")
    number = array.reshape(-1)[0]
    number = number.item() if isinstance(number, np.generic) else number  # an object array holds a Python int
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise InputError(f"{name} must be one number, got {value!r}")
    if tensor.dtype == "TYPE_FP32":
        if not (math.isfinite(number) and abs(number) <= np.finfo(np.float32).max):
            raise InputError(f"{name} must be a finite number within float32 range, got {number}")
        return number
    if isinstance(number, float) and not number.is_integer():
        raise InputError(f"{name} must be a whole number, got {number}")
    info = np.iinfo(tensor.numpy_dtype)
    low = 0 if name == "seed" else info.min  # the server draws noise from non-negative seeds only
    if not low <= number <= info.max:
        wire = tensor.dtype.removeprefix("TYPE_")
        raise InputError(f"{name} must be an integer from {low} to {info.max} (the model's {wire} input), got {number}")
    return int(number)


def request_arrays(**values) -> dict[str, np.ndarray]:
    """Keyword values (None: left out) -> the model's input arrays, batch dim first. Values the wire types
    cannot carry (an out-of-range integer, an empty array) are refused here, naming the input."""
    arrays = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in INPUT_BY_NAME:
            raise ServerError(f"the disca model has no input {name!r}")
        tensor = INPUT_BY_NAME[name]
        if tensor.dtype == "TYPE_STRING":
            arrays[name] = np.array([[str(value).encode()]], dtype=np.object_)
        elif tensor.dims == (1,):
            arrays[name] = np.array([[_number(name, tensor, value)]], tensor.numpy_dtype)
        else:
            try:
                array = np.asarray(value, tensor.numpy_dtype)
            except (TypeError, ValueError) as e:
                raise InputError(f"{name} must be a float array, got {type(value).__name__}: {e}") from None
            if array.ndim != len(tensor.dims) or array.size == 0:
                want = (
                    "[L, D] array (one row per token)" if name == "text_embeddings" else f"{len(tensor.dims)}-D array"
                )
                raise InputError(f"{name} must be a non-empty {want}, got shape {list(array.shape)}")
            arrays[name] = array[None]
    return arrays


def _one_line(message: str) -> str:
    """A server's error as one line: a traceback (from PyTriton, when an input never reached disca) is cut to
    its last line, the exception itself."""
    if "Traceback (most recent call last)" not in message:
        return message
    head = message.split("Traceback (most recent call last)")[0].rstrip(": \n")
    lines = [line.strip() for line in message.split("\nAt:")[0].splitlines()]
    last = next((line for line in reversed(lines) if line and not line.startswith(("File ", "^", "~"))), "")
    return f"{head}: {last} (the server's log has the traceback)"


class Client:
    def __init__(self, url: str, grpc: bool = False, model: str = MODEL_NAME, timeout_s: float = 600.0):
        self._module, self._exception, self._wire = _tritonclient(grpc)
        self.grpc, self.model, self.timeout_s = grpc, model, timeout_s
        kwargs = {} if grpc else {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        try:
            self._client = self._module.InferenceServerClient(url, **kwargs)
        except Exception as e:  # a malformed URL
            raise ServerError(f"cannot open a client for {url!r}: {e}") from None
        self.url = url

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self) -> bool:
        """Is the server ready and the model loaded (Triton's /v2/health/ready and model ready)?"""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # refused, reset, timed out: not ready
            return False

    def infer(self, arrays: dict[str, np.ndarray]) -> RemoteResult:
        """Send one request of raw input arrays, batch dim first (see `request_arrays`); their dtypes go as
        they are, so the server names a wrong one."""
        inputs = []
        for name, array in arrays.items():
            tensor = self._module.InferInput(name, list(array.shape), self._wire(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.grpc else {}
            response = self._client.infer(self.model, inputs, **kwargs)
        except self._exception as e:
            message = e.message() if hasattr(e, "message") else str(e)
            raise ServerError(f"{self.url}: {_one_line(message or str(e))}") from None
        except OSError as e:
            raise ServerError(f"cannot reach the server at {self.url}: {e}") from None
        error = response.as_numpy("error").reshape(-1)[0]
        if error:
            raise ServerError(error.decode())
        stats = json.loads(response.as_numpy("stats").reshape(-1)[0])
        return RemoteResult(response.as_numpy("video"), stats, stats.get("anchors"))

    def generate(
        self,
        prompt: str | None = None,
        *,
        text_embeddings: np.ndarray | None = None,
        seed: int = 0,
        steps: int | None = None,
        anchors: int | None = None,
        schedule: str | list[int] | None = None,
        policy: str | None = None,
        threshold: float | None = None,
        shift: float | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> RemoteResult:
        """One clip, as `Pipeline.generate` with batch 1: anchors is a budget K, schedule the anchor steps."""
        if isinstance(schedule, list | tuple):
            schedule = ",".join(str(int(a)) for a in schedule)
        arrays = request_arrays(
            prompt=prompt,
            text_embeddings=text_embeddings,
            seed=seed,
            steps=steps,
            anchors=anchors,
            schedule=schedule,
            policy=policy,
            threshold=threshold,
            shift=shift,
            frames=frames,
            height=height,
            width=width,
        )
        return self.infer(arrays)
