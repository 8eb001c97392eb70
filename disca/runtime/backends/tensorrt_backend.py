"""TensorRT backend: the bundle's engines on a CUDA stream of their own.

Needs `tensorrt` and a CUDA build of torch (its tensors are the I/O buffers).
- One execution context per engine, all on ONE device allocation sized to the largest
  (USER_MANAGED memory): the graphs never run at the same time, so they can share activation
  memory (as in NVIDIA's diffusion demo).
- The requested device (`cuda:1`, ...) is made current around everything that touches the GPU:
  deserialization, allocation, launches, captures (TensorRT uses the current device).
- Launches go to a stream the backend owns (not the legacy default stream), which waits for
  the caller's stream before a launch, and the caller's stream waits for it after: inputs are
  ready, and outputs are ready for whatever the caller queues next.
- The cache (`hidden`) is the tensor the full engine writes; the predictor engine reads it in
  place on the device (its address is bound directly): no host round trip between steps.
- `cuda_graphs=True` (static-shape engines, `disca-export build --static`): each engine's
  launch is captured once into a CUDA graph and replayed, which removes the per-step launch
  overhead. A replay writes the same output buffers every time, so the caller gets clones:
  CFG's two velocities, or TeaCache's remembered probe, would otherwise be overwritten by the
  next call.
- Engines built with `--weight-streaming` get their weight budget set after deserialization
  and before any context exists (TensorRT's order); they cannot be captured in CUDA graphs.
"""

from __future__ import annotations

import numpy as np

from disca.engines import check_engine, engine_key, engine_record, environment, graph_digest, plan_path
from disca.errors import BackendUnavailable, BundleError, DiscaError, EngineMismatch
from disca.runtime.backends.base import HEAD_USERS, Backend

GRAPHS = ("full", "predictor")
OPTIONAL = ("head", "first")  # loaded when their engines were built (DisCa's reuse gaps, the training-free caches)


# ----------------------------------------------------------------------------- TensorRT calls, checked
# Module functions over TensorRT's objects (ICudaEngine, IExecutionContext), so that their use of the
# documented interface is tested on CPU against stand-ins (tests/test_tensorrt_contract.py).


def set_weight_budget(engine, record: dict, budget: int | None) -> int | None:
    """Set a streaming engine's device budget for weights (before any execution context exists).

    `budget`: bytes of weights kept on the device; None: TensorRT's automatic budget. -> the budget set, or
    None for an engine built without weight streaming (a budget for it is an error).
    """
    if not record.get("weight_streaming"):
        if budget is not None:
            raise BackendUnavailable(
                f"{record['file']} was built without weight streaming: rebuild it with "
                "`disca-export build ... --weight-streaming` to give it a budget"
            )
        return None
    total = engine.streamable_weights_size
    if total == 0:  # TensorRT found nothing to stream (small weights stay resident): no budget to set
        return 0
    if budget is None:
        budget = engine.get_weight_streaming_automatic_budget()
    if not 0 <= budget <= total:
        raise DiscaError(f"weight streaming budget {budget} bytes is outside 0..{total} for {record['file']}")
    engine.weight_streaming_budget_v2 = budget
    return budget


def bind_address(ctx, graph: str, name: str, tensor) -> None:
    """Bind a tensor's device address; TensorRT answers False (and keeps the old address) when it rejects it."""
    if not ctx.set_tensor_address(name, tensor.data_ptr()):
        raise DiscaError(
            f"TensorRT rejected the address of {graph} engine tensor {name} (misaligned or not on the GPU)"
        )


def check_input(graph: str, name: str, tensor, dtype, device) -> None:
    """An input must already have the engine's dtype and live on the backend's device: TensorRT reads raw
    addresses and would read float32 bytes as float16, or another GPU's memory."""
    if tensor.dtype != dtype:
        raise DiscaError(f"{graph} engine input {name} is {tensor.dtype}, the engine takes {dtype}")
    if tensor.device != device:
        raise DiscaError(f"{graph} engine input {name} is on {tensor.device}, the engine runs on {device}")


def bind_inputs(ctx, graph: str, inputs: dict, dtypes: dict, device, profile: dict) -> None:
    for name, tensor in inputs.items():
        check_input(graph, name, tensor, dtypes[name], device)
        if not ctx.set_input_shape(name, tuple(tensor.shape)):
            lo, _, hi = profile[name]
            raise DiscaError(
                f"{graph} engine: input {name} has shape {tuple(tensor.shape)}, outside the engine's profile "
                f"(min {tuple(lo)}, max {tuple(hi)})"
            )
        bind_address(ctx, graph, name, tensor)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        bundle,
        precision: str = "fp16",
        device: str = "cuda",
        cuda_graphs: bool = False,
        weight_budget: int | None = None,
    ):
        super().__init__(bundle)
        self.precision = precision
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.weight_budget = weight_budget  # bytes of streamed weights kept on the device (None: automatic)

    # ---------------------------------------------------------------- lifecycle

    def _activate_impl(self) -> None:
        env = environment(self.device)  # raises BackendUnavailable without TensorRT, a CUDA torch or the GPU
        import tensorrt as trt
        import torch

        self.torch, self.trt = torch, trt
        device = torch.device(self.device)
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        built = self.bundle.manifest.get("engines", {})
        optional = [g for g in OPTIONAL if engine_key(g, self.precision) in built]
        records = {g: engine_record(self.bundle, g, self.precision) for g in (*GRAPHS, *optional)}
        for graph, record in records.items():
            check_engine(record, env, graph_digest(self.bundle, graph, self.precision))
            if self.cuda_graphs and not record["static"]:
                raise BackendUnavailable(
                    f"CUDA graphs need static-shape engines; {record['file']} has a dynamic profile: "
                    "rebuild with `disca-export build --static`"
                )
            if self.cuda_graphs and record.get("weight_streaming"):
                raise BackendUnavailable(
                    f"{record['file']} streams its weights, which cannot be captured in a CUDA graph: "
                    "run without --cuda-graphs, or rebuild without --weight-streaming"
                )
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engines, self.records, self.budgets = {}, records, {}
            for graph, record in records.items():
                engine = runtime.deserialize_cuda_engine(plan_path(self.bundle, record).read_bytes())
                if engine is None:
                    raise EngineMismatch(f"TensorRT could not deserialize {record['file']}: rebuild it")
                self.budgets[graph] = set_weight_budget(engine, record, self.weight_budget)
                self.engines[graph] = engine
            # Sizes after the budgets: a streaming engine's scratch memory depends on its budget.
            size = max(e.device_memory_size_v2 for e in self.engines.values())
            self.workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
            self.contexts = {}
            for graph, engine in self.engines.items():
                ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                if ctx is None:
                    raise BackendUnavailable(f"TensorRT could not create an execution context for {graph}")
                ctx.set_device_memory(self.workspace.data_ptr(), size)
                self.contexts[graph] = ctx
            self.stream = torch.cuda.Stream(self.device)
        self.io = {g: self._io(e) for g, e in self.engines.items()}  # graph -> ({input: dtype}, {output: dtype})
        self.captured = {}  # graph -> (CUDAGraph, input buffers, output buffers)

    def _io(self, engine):
        trt, torch = self.trt, self.torch
        inputs, outputs = {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            # trt.nptype -> numpy dtype -> torch dtype (TensorRT has no torch mapping of its own)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            kind = inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs
            kind[name] = dtype
        return inputs, outputs

    def _deactivate_impl(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()  # queued launches still use the workspace and the bound buffers
        self.captured = {}
        self.contexts = self.engines = {}
        self.workspace = self.stream = None

    @property
    def workspace_bytes(self) -> int:
        return self.workspace.numel()

    # ---------------------------------------------------------------- graphs

    def _bind(self, graph: str, inputs: dict) -> dict:
        """Bind inputs (torch CUDA tensors) and fresh output tensors. -> {output name: tensor}"""
        ctx = self.contexts[graph]
        in_dtypes, out_dtypes = self.io[graph]
        bind_inputs(ctx, graph, inputs, in_dtypes, self.device, self.records[graph]["profile"])
        outputs = {}
        for name, dtype in out_dtypes.items():
            out = self.torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device=self.device)
            bind_address(ctx, graph, name, out)
            outputs[name] = out
        return outputs

    def _on_stream(self, work) -> None:
        """Run `work` (a launch or a replay) on the backend's stream, ordered after the caller's stream's
        work (the inputs) and before it (the outputs' readers)."""
        torch = self.torch
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            work()
        caller.wait_stream(self.stream)

    def _launch(self, graph: str) -> None:
        if not self.contexts[graph].execute_async_v3(self.torch.cuda.current_stream(self.device).cuda_stream):
            raise DiscaError(f"TensorRT failed to run the {graph} engine")

    def _run(self, graph: str, inputs: dict) -> dict:
        with self.torch.cuda.device(self.device):
            inputs = {k: v.contiguous() for k, v in inputs.items()}
            if not self.cuda_graphs:
                outputs = self._bind(graph, inputs)
                self._on_stream(lambda: self._launch(graph))
                return outputs
            in_dtypes = self.io[graph][0]
            for name, tensor in inputs.items():  # copy_ below would convert silently
                check_input(graph, name, tensor, in_dtypes[name], self.device)
            if graph not in self.captured:
                self._capture(graph, inputs)
            cuda_graph, static_in, static_out = self.captured[graph]
            for name, tensor in inputs.items():
                static_in[name].copy_(tensor)
            self._on_stream(cuda_graph.replay)
            # The next replay rewrites static_out: hand out tensors the caller owns.
            return {k: v.clone() for k, v in static_out.items()}

    def _capture(self, graph: str, inputs: dict) -> None:
        torch = self.torch
        static_in = {k: v.clone() for k, v in inputs.items()}
        static_out = self._bind(graph, static_in)
        # TensorRT finishes its shape-dependent setup on the first launch, which is not capturable.
        self._on_stream(lambda: self._launch(graph))
        self.stream.synchronize()
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph, stream=self.stream):
            self._launch(graph)
        self.captured[graph] = (cuda_graph, static_in, static_out)

    def _full_impl(self, latent, t, r, text):
        out = self._run("full", {"latent": latent, "t": t, "r": r, "text": text})
        return out["velocity"], out["hidden"]

    def _predict_impl(self, latent, t, r, text, cache):
        return self._run("predictor", {"latent": latent, "t": t, "r": r, "text": text, "hidden": cache})["velocity"]

    def _optional(self, graph: str, needed_by: str) -> None:
        if graph not in self.engines:
            raise BundleError(
                f"bundle {self.bundle.path} has no {self.precision} engine for the {graph} graph ({needed_by} need "
                f"it): `disca-export build {self.bundle.path} --precision {self.precision} --graphs {graph}`"
            )

    def _head_impl(self, latent, t, r, text, hidden):
        self._optional("head", HEAD_USERS)
        return self._run("head", {"latent": latent, "t": t, "r": r, "text": text, "hidden": hidden})["velocity"]

    def _first_impl(self, latent, t, r, text):
        self._optional("first", "teacache / first-block")
        out = self._run("first", {"latent": latent, "t": t, "r": r, "text": text})
        return out["tokens"], out["modulated"], out["first"]

    # ---------------------------------------------------------------- arrays (torch CUDA tensors)

    def asarray(self, a: np.ndarray):
        return self.torch.from_numpy(np.array(a, dtype=np.float32)).to(self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def values(self, x):
        return x

    def isfinite(self, x) -> bool:
        return bool(self.torch.isfinite(x).all())

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)
