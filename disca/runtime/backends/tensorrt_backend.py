"""TensorRT backend: the bundle's two engines on the current CUDA stream.

Needs `tensorrt` and a CUDA build of torch (its tensors are the I/O buffers).
- One execution context per engine, both on ONE device allocation sized to the larger of
  the two (USER_MANAGED memory): the DiT and the predictor never run at the same time, so
  they can share activation memory (as in NVIDIA's diffusion demo).
- The cache (`hidden`) is the tensor the full engine writes; the predictor engine reads it in
  place on the device (its address is bound directly): no host round trip between steps.
- `cuda_graphs=True` (static-shape engines, `disca-export build --static`): each engine's
  launch is captured once into a CUDA graph and replayed, which removes the per-step launch
  overhead; the predictor's graph reads the full graph's cache buffer in place.
"""

from __future__ import annotations

import numpy as np

from disca.engines import check_engine, engine_key, engine_record, environment, graph_digest, plan_path
from disca.errors import BackendUnavailable, BundleError, DiscaError, EngineMismatch
from disca.runtime.backends.base import HEAD_USERS, Backend

GRAPHS = ("full", "predictor")
OPTIONAL = ("head", "first")  # loaded when their engines were built (DisCa's reuse gaps, the training-free caches)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle, precision: str = "fp16", device: str = "cuda", cuda_graphs: bool = False):
        super().__init__(bundle)
        self.precision = precision
        self.device = device
        self.cuda_graphs = cuda_graphs

    # ---------------------------------------------------------------- lifecycle

    def _activate_impl(self) -> None:
        env = environment()  # raises BackendUnavailable without TensorRT, a CUDA torch or a GPU
        import tensorrt as trt
        import torch

        self.torch, self.trt = torch, trt
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engines, self.contexts, self.records = {}, {}, {}
        built = self.bundle.manifest.get("engines", {})
        optional = [g for g in OPTIONAL if engine_key(g, self.precision) in built]
        for graph in (*GRAPHS, *optional):
            record = engine_record(self.bundle, graph, self.precision)
            check_engine(record, env, graph_digest(self.bundle, graph, self.precision))
            engine = runtime.deserialize_cuda_engine(plan_path(self.bundle, record).read_bytes())
            if engine is None:
                raise EngineMismatch(f"TensorRT could not deserialize {record['file']}: rebuild it")
            if self.cuda_graphs and not record["static"]:
                raise BackendUnavailable(
                    f"CUDA graphs need static-shape engines; {record['file']} has a dynamic profile: "
                    "rebuild with `disca-export build --static`"
                )
            self.engines[graph], self.records[graph] = engine, record
            self.contexts[graph] = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        size = max(e.device_memory_size_v2 for e in self.engines.values())
        self.workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        for ctx in self.contexts.values():
            ctx.set_device_memory(self.workspace.data_ptr(), size)
        self.outputs = {
            g: [
                e.get_tensor_name(i)
                for i in range(e.num_io_tensors)
                if e.get_tensor_mode(e.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
            ]
            for g, e in self.engines.items()
        }
        self.captured = {}  # graph -> (CUDAGraph, input buffers, output buffers)

    def _deactivate_impl(self) -> None:
        self.captured = {}
        self.contexts = self.engines = {}
        self.workspace = None

    @property
    def workspace_bytes(self) -> int:
        return self.workspace.numel()

    # ---------------------------------------------------------------- graphs

    def _dtype(self, graph: str, name: str):
        import tensorrt as trt

        return self.torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engines[graph].get_tensor_dtype(name)))).dtype

    def _bind(self, graph: str, inputs: dict) -> dict:
        """Bind inputs (torch CUDA tensors) and fresh output tensors. -> {output name: tensor}"""
        ctx = self.contexts[graph]
        for name, tensor in inputs.items():
            if not ctx.set_input_shape(name, tuple(tensor.shape)):
                shapes = self.records[graph]["profile"][name]
                raise DiscaError(
                    f"{graph} engine: input {name} has shape {tuple(tensor.shape)}, outside the engine's profile "
                    f"(min {shapes[0]}, max {shapes[2]})"
                )
            ctx.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs[graph]:
            out = self.torch.empty(
                tuple(ctx.get_tensor_shape(name)), dtype=self._dtype(graph, name), device=self.device
            )
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        return outputs

    def _launch(self, graph: str) -> None:
        stream = self.torch.cuda.current_stream(self.device)
        if not self.contexts[graph].execute_async_v3(stream.cuda_stream):
            raise DiscaError(f"TensorRT failed to run the {graph} engine")

    def _run(self, graph: str, inputs: dict) -> dict:
        inputs = {k: v.contiguous() for k, v in inputs.items()}
        if not self.cuda_graphs:
            outputs = self._bind(graph, inputs)
            self._launch(graph)
            return outputs
        if graph not in self.captured:
            self._capture(graph, inputs)
        cuda_graph, static_in, static_out = self.captured[graph]
        for name, tensor in inputs.items():
            if static_in[name].data_ptr() != tensor.data_ptr():  # the cache usually is the buffer itself
                static_in[name].copy_(tensor)
        cuda_graph.replay()
        return static_out

    def _capture(self, graph: str, inputs: dict) -> None:
        torch = self.torch
        static_in = {k: v.clone() for k, v in inputs.items()}
        if graph == "predictor" and "full" in self.captured:
            static_in["hidden"] = self.captured["full"][2]["hidden"]  # read the cache where full writes it
            static_in["hidden"].copy_(inputs["hidden"])
        static_out = self._bind(graph, static_in)
        self._launch(graph)  # TensorRT finishes its shape-dependent setup on the first launch, not capturable
        torch.cuda.synchronize(self.device)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
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
