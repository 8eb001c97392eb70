"""The Python-backend model of a repository written by `disca-export triton` (copied there as
`disca/1/model.py`). It runs inside tritonserver, which provides `triton_python_backend_utils`;
outside Triton this module does not import. The work is disca's: `ClipRunner` batches the
requests of each Triton batch exactly as `disca-serve` does, with the same inputs and outputs."""

import json
import os
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        options = json.loads(params["backend_options"])
        if args["model_instance_kind"] == "GPU":
            # each instance is its own process: pin it to its GPU before any CUDA library loads
            os.environ["CUDA_VISIBLE_DEVICES"] = args["model_instance_device_id"]
            if "device" in options:
                options["device"] = "cuda"
        bundle = Path(args["model_repository"]) / args["model_version"] / params["bundle"]  # an absolute path wins

        from disca.serving.batching import load_runner  # after CUDA_VISIBLE_DEVICES

        self.runner = load_runner(bundle, params["backend"], options)  # loads, then one warm-up clip

    def execute(self, requests):
        inputs = [{tensor.name(): tensor.as_numpy() for tensor in request.inputs()} for request in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in out.items()])
            for out in self.runner(inputs)
        ]

    def finalize(self):
        self.runner.pipe.close()
