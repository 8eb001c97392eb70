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
from dataclasses import dataclass

import numpy as np

from disca.errors import BackendUnavailable, DiscaError
from disca.serving.protocol import INPUT_BY_NAME, MODEL_NAME


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


def request_arrays(**values) -> dict[str, np.ndarray]:
    """Keyword values (None: left out) -> the model's input arrays, batch dim first."""
    arrays = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in INPUT_BY_NAME:
            raise ServerError(f"the disca model has no input {name!r}")
        tensor = INPUT_BY_NAME[name]
        if tensor.dtype == "TYPE_STRING":
            arrays[name] = np.array([[str(value).encode()]], dtype=np.object_)
        else:
            array = np.asarray(value, tensor.numpy_dtype)
            arrays[name] = array.reshape(1, -1) if tensor.dims == (1,) else array[None]
    return arrays


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
            raise ServerError(f"{self.url}: {e.message() if hasattr(e, 'message') else e}") from None
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
