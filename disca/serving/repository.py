"""`disca-export triton`: a standalone Triton model repository for `tritonserver --model-repository REPO`
(NVIDIA's Triton container on GPU nodes, or any tritonserver with the Python backend):

    REPO/disca/config.pbtxt     the model's tensors (protocol.py), instance group, dynamic batching
    REPO/disca/1/model.py       a Python-backend model running disca's runtime (triton_model.py)
    REPO/disca/1/bundle/        the bundle (unless referenced by an absolute path)

The Python environment tritonserver runs must have disca installed (with the backend's extra).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from disca._atomic import atomic_directory
from disca.bundle import Bundle
from disca.errors import ConfigError
from disca.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS, TensorDef

TEMPLATE = Path(__file__).with_name("triton_model.py")


def _tensor(t: TensorDef, optional: bool) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    opt = "\n    optional: true" if optional and t.optional else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.dtype}\n    dims: [ {dims} ]{opt}\n  }}'


def config_pbtxt(
    *,
    kind: str,
    instances: int,
    max_batch: int,
    max_queue_delay_ms: float,
    parameters: dict[str, str],
    gpus: list[int] | None = None,
) -> str:
    """The model configuration, in Triton's protobuf text format."""
    group = f"    count: {instances}\n    kind: KIND_{kind.upper()}"
    if gpus:
        group += f"\n    gpus: [ {', '.join(str(g) for g in gpus)} ]"
    params = ",\n".join(
        f'  {{\n    key: "{key}"\n    value: {{ string_value: {json.dumps(value)} }}\n  }}'
        for key, value in parameters.items()
    )
    inputs = ",\n".join(_tensor(t, True) for t in INPUTS)
    outputs = ",\n".join(_tensor(t, False) for t in OUTPUTS)
    return (
        f'name: "{MODEL_NAME}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"# {instances} instance(s) on each {'GPU' if kind == 'gpu' else 'node'}"
        f"{' listed' if gpus else ''}: each is its own process with its own sessions / engines\n"
        f"instance_group [\n  {{\n{group}\n  }}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_ms * 1000)}\n}}\n"
        f"parameters [\n{params}\n]\n"
    )


def write_repository(
    bundle_path,
    out,
    *,
    backend: str = "onnxruntime",
    backend_options: dict | None = None,
    kind: str = "gpu",
    instances: int = 1,
    gpus: list[int] | None = None,
    max_batch: int | None = None,
    max_queue_delay_ms: float = 2.0,
    reference: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the repository at `out` (through a temporary directory renamed into place).

    reference: the bundle's absolute path as the server will see it (a mounted volume): it is then
    not copied into the repository."""
    if kind not in ("gpu", "cpu"):
        raise ConfigError(f"--kind must be gpu or cpu, got {kind!r}")
    if reference is not None and not reference.startswith("/"):
        raise ConfigError(f"a referenced bundle needs the absolute path the server sees, got {reference!r}")
    bundle = Bundle.open(bundle_path)  # checks the bundle is whole before anything is written
    parameters = {
        "bundle": reference or "bundle",  # relative: inside the model's version directory
        "backend": backend,
        "backend_options": json.dumps(backend_options or {}),
    }
    config = config_pbtxt(
        kind=kind,
        instances=instances,
        max_batch=max_batch or bundle.ranges.batch[2],
        max_queue_delay_ms=max_queue_delay_ms,
        parameters=parameters,
        gpus=gpus,
    )
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it")
    with atomic_directory(out) as tmp:
        model = tmp / MODEL_NAME
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(config)
        shutil.copyfile(TEMPLATE, model / "1" / "model.py")
        if reference is None:
            shutil.copytree(bundle.path, model / "1" / "bundle")
    return Path(out)
