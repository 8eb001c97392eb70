"""Run the requests Triton's dynamic batcher grouped: the ones that share shapes and schedule
are denoised as ONE batch through the graphs (their batch axis is dynamic), each from its own
seed's noise, so each clip equals a run of that request alone (to the graphs' batch parity); the
rest run as smaller compatible batches. Shared by `disca-serve` and the model repository's model.py."""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import numpy as np

from disca.errors import BundleError, DiscaError
from disca.runtime.pipeline import Pipeline
from disca.serving.requests import ClipRequest, parse_request

log = logging.getLogger("disca.serving")


def _error_response(message: str) -> dict:
    return {
        "video": np.zeros((1, 1, 1, 1, 1), np.float32),  # a placeholder: PyTriton cannot send an empty tensor
        "stats": np.array([[b"{}"]], dtype=np.object_),
        "error": np.array([[message.encode()]], dtype=np.object_),
    }


class ClipRunner:
    """requests (each {input name: array with batch dim 1}) -> responses ({video, stats, error})."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.max_batch = pipe.bundle.ranges.batch[2]

    def __call__(self, requests: list) -> list[dict]:
        responses: list[dict | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, ClipRequest]]] = defaultdict(list)
        for i, inputs in enumerate(requests):
            try:
                clip = parse_request(self.pipe, dict(inputs))
            except DiscaError as e:
                responses[i] = _error_response(str(e))
                continue
            groups[clip.batch_key()].append((i, clip))
        for members in groups.values():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                for i, response in zip([i for i, _ in chunk], self._run(chunk, len(requests))):
                    responses[i] = response
        return responses

    def _run(self, chunk: list[tuple[int, ClipRequest]], triton_batch: int) -> list[dict]:
        first = chunk[0][1]
        try:
            result = self.pipe.generate(
                text_embeddings=np.stack([clip.text for _, clip in chunk]),
                seed=[clip.seed for _, clip in chunk],
                steps=first.steps,
                shift=first.shift,
                anchors=first.anchors,
                policy=first.policy,
                threshold=first.threshold,
                frames=first.frames,
                height=first.height,
                width=first.width,
            )
        except DiscaError as e:  # checked requests fail here only on what they share (e.g. a NaN step)
            return [_error_response(str(e))] * len(chunk)
        stats = {**result.stats.to_dict(), "anchors": result.anchors, "batch": len(chunk), "triton_batch": triton_batch}
        encoded = np.array([[json.dumps(stats).encode()]], dtype=np.object_)
        no_error = np.array([[b""]], dtype=np.object_)
        return [{"video": result.video[j : j + 1], "stats": encoded, "error": no_error} for j in range(len(chunk))]


def load_runner(bundle, backend: str = "onnxruntime", backend_options: dict | None = None) -> ClipRunner:
    """One model instance: a Pipeline on the backend, warmed up by one clip at the bundle's opt shape."""
    pipe = Pipeline.load(bundle, backend=backend, **(backend_options or {}))
    runner = ClipRunner(pipe)
    text = np.zeros((1, pipe.bundle.ranges.text_len[1], pipe.bundle.text_dim), np.float32)
    (warm,) = runner([{"text_embeddings": text}])
    if warm["error"][0, 0]:
        pipe.close()
        raise BundleError(f"the warm-up run on {bundle} failed: {warm['error'][0, 0].decode()}")
    return runner
