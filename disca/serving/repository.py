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

from disca._atomic import atomic_directory, check_writable
from disca.bundle import Bundle
from disca.errors import ConfigError, InputError
from disca.serving.protocol import INPUTS, MODEL_NAME, OUTPUTS, TensorDef

TEMPLATE = Path(__file__).with_name("triton_model.py")

# Bounds shared with disca-serve. Each instance is a process (or a Pipeline) with its own sessions / engines,
# so more than this per GPU or node is a typo; a batcher waiting over a minute is one too.
MAX_INSTANCES = 128
MAX_QUEUE_DELAY_MS = 60_000.0
MAX_BATCH = 2**31 - 1  # Triton's max_batch_size is an int32


def check_batching(instances: int, max_batch: int | None, max_queue_delay_ms: float) -> None:
    """Refuse instance counts, batch sizes and batcher delays Triton cannot take (or no machine could run)."""
    if not 1 <= instances <= MAX_INSTANCES:
        raise ConfigError(f"--instances must be between 1 and {MAX_INSTANCES}, got {instances}")
    if max_batch is not None and not 1 <= max_batch <= MAX_BATCH:
        raise ConfigError(f"--max-batch must be between 1 and {MAX_BATCH}, got {max_batch}")
    delay = float(max_queue_delay_ms)
    if not 0 <= delay <= MAX_QUEUE_DELAY_MS:  # also refuses nan
        raise ConfigError(f"--max-queue-delay-ms must be between 0 and {MAX_QUEUE_DELAY_MS:g}, got {delay}")


def check_gpus(gpus: list[int] | None) -> None:
    if gpus is None:
        return
    if not gpus or any(g < 0 for g in gpus):
        raise ConfigError(f"--gpus must list GPU ids 0, 1, ..., got {gpus}")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus lists a GPU twice: {gpus}; --instances sets how many instances each GPU runs")


def _not_a_repository(out: Path) -> str | None:
    """Why `out` (an existing directory) is not a repository this module wrote, or None if it is one: only then
    may --overwrite replace it, since anything else in it (a user's files, other models) would be lost."""
    try:
        return _layout_mismatch(out)
    except OSError as e:
        return f"it cannot be read: {e.strerror or e}"


def _layout_mismatch(out: Path) -> str | None:
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return None  # empty: nothing to lose
    if entries != [MODEL_NAME]:
        return f"it holds {', '.join(e for e in entries if e != MODEL_NAME)[:200]}"
    model = out / MODEL_NAME
    config = model / "config.pbtxt"
    if not model.is_dir() or model.is_symlink() or not config.is_file():
        return f"{MODEL_NAME}/config.pbtxt is missing"
    try:
        text = config.read_text()
    except (OSError, UnicodeDecodeError):
        return f"{MODEL_NAME}/config.pbtxt is not readable"
    if not text.startswith(f'name: "{MODEL_NAME}"\nbackend: "python"\n') or 'key: "backend_options"' not in text:
        return f"{MODEL_NAME}/config.pbtxt is not one disca wrote"
    extra = [f"{MODEL_NAME}/{p.name}" for p in model.iterdir() if p.name not in ("config.pbtxt", "1")]
    version = model / "1"
    if version.is_dir() and not version.is_symlink():
        # __pycache__: written by the Python backend when it imported model.py
        keep = ("model.py", "bundle", "__pycache__")
        extra += [f"{MODEL_NAME}/1/{p.name}" for p in version.iterdir() if p.name not in keep]
    if extra:
        return f"it holds {', '.join(sorted(extra))[:200]}"
    if not (version / "model.py").is_file():
        return f"{MODEL_NAME}/1/model.py is missing"
    return None


def check_out(bundle_path, out, overwrite: bool) -> Path:
    """Refuse an --out whose replacement would lose something: a file, a symlink, a directory disca did not
    write, the bundle itself or a directory holding it (or inside it)."""
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"--out {out} is a symbolic link: give the directory it points to, or another path")
    check_writable(out, "Triton model repository", directory=True)  # refuses a plain file
    src, dst = Path(bundle_path).resolve(), out.resolve()
    if dst == src:
        raise InputError(f"--out {out} is the bundle itself: write the repository somewhere else")
    if src in dst.parents:
        raise InputError(f"--out {out} is inside the bundle {bundle_path}: write the repository somewhere else")
    if dst in src.parents:
        raise InputError(f"--out {out} holds the bundle {bundle_path}: write the repository somewhere else")
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} already exists: pass --overwrite to replace it")
        why = _not_a_repository(out)
        if why is not None:
            raise InputError(
                f"--overwrite replaces only a Triton repository written by `disca-export triton`, and {out} is not "
                f"one ({why}): pick another --out, or move its contents away"
            )
    return out


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
    if backend == "tensorrt" and kind == "cpu":
        raise ConfigError(
            "TensorRT engines run on a GPU: use --kind gpu, or --backend onnxruntime / torch with --kind cpu"
        )
    if gpus is not None and kind != "gpu":
        raise ConfigError("--gpus needs --kind gpu")
    check_batching(instances, max_batch, max_queue_delay_ms)
    check_gpus(gpus)
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
    check_out(bundle.path, out, overwrite)
    with atomic_directory(out) as tmp:
        model = tmp / MODEL_NAME
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(config)
        shutil.copyfile(TEMPLATE, model / "1" / "model.py")
        if reference is None:
            shutil.copytree(bundle.path, model / "1" / "bundle")
    return Path(out)
