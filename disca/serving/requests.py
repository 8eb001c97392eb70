"""One Triton request (its input tensors, batch dim first) -> a checked `ClipRequest`, or a
`RequestError` naming what is wrong. Everything that could make a request fail is checked here,
per request, so a batch of checked requests fails only on what they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disca.errors import DiscaError
from disca.runtime.pipeline import Pipeline
from disca.runtime.schedule import POLICIES, THRESHOLD_POLICIES, budget_anchors, check_anchors, parse_anchors
from disca.serving.protocol import INPUT_BY_NAME

MAX_STEPS = 1000  # a request's work is bounded: one clip must not hold an instance for hours


class RequestError(DiscaError):
    """A request the server cannot run: the message names the input and how to fix it."""


@dataclass
class ClipRequest:
    text: np.ndarray  # (L, Dt) float32
    seed: int
    steps: int
    shift: float
    anchors: object  # list of anchor steps, "full", or None (threshold policies pick their own)
    policy: str
    threshold: float | None
    frames: int
    height: int
    width: int

    def batch_key(self) -> tuple:
        """Requests with equal keys run as one batch: same shapes and the same per-step graphs.
        A threshold policy decides its full steps from a change measure over the whole batch,
        so its requests never share a batch (the key is unique)."""
        if self.policy in THRESHOLD_POLICIES:
            return ("alone", id(self))
        anchors = self.anchors if isinstance(self.anchors, str) else tuple(self.anchors)
        return (self.text.shape, self.frames, self.height, self.width, self.steps, self.shift, anchors, self.policy)


def _scalar(inputs: dict, name: str, default=None):
    """The one value of a [1] input, or `default` when absent."""
    if name not in inputs:
        return default
    value = np.asarray(inputs[name])
    if value.size != 1:
        raise RequestError(f"input {name!r} must hold one value per request, got shape {value.shape}")
    value = value.reshape(-1)[0]
    if INPUT_BY_NAME[name].dtype == "TYPE_STRING":
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"input {name!r} is not UTF-8 text") from None
        return str(value)
    return value.item()


def parse_request(pipe: Pipeline, inputs: dict) -> ClipRequest:
    """inputs: {name: array with a leading batch dim of 1}, as Triton hands them to a model."""
    unknown = sorted(set(inputs) - set(INPUT_BY_NAME))
    if unknown:
        raise RequestError(f"unknown inputs {unknown}; the model takes {sorted(INPUT_BY_NAME)}")
    for name, value in inputs.items():
        if np.asarray(value).shape[:1] != (1,):
            raise RequestError(f"input {name!r} must have a batch dimension of 1 (one clip per request)")
    bundle = pipe.bundle
    prompt = _scalar(inputs, "prompt")
    if (prompt is None) == ("text_embeddings" not in inputs):
        raise RequestError("give exactly one of the inputs 'prompt' (BYTES) or 'text_embeddings' (FP32 [L, D])")
    if prompt is not None:
        text = pipe.embed_prompt(prompt).astype(np.float32)  # an unknown word: a DiscaError naming it
    else:
        text = np.asarray(inputs["text_embeddings"], np.float32)[0]
        if text.ndim != 2 or text.shape[1] != bundle.text_dim:
            want = f"[L, {bundle.text_dim}]"
            raise RequestError(f"text_embeddings must be {want} for this bundle, got {list(text.shape)}")
        if not np.isfinite(text).all():
            raise RequestError("text_embeddings contain NaN or Inf")

    schedule = bundle.schedule
    steps = _scalar(inputs, "steps", schedule.steps)
    if not 1 <= steps <= MAX_STEPS:
        raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    shift = _scalar(inputs, "shift", schedule.shift)
    if not shift > 0:
        raise RequestError(f"shift must be positive, got {shift}")
    policy = _scalar(inputs, "policy", "disca")
    if policy not in POLICIES:
        raise RequestError(f"unknown policy {policy!r}; pick one of {', '.join(POLICIES)}")
    threshold = _scalar(inputs, "threshold")
    if threshold is not None and not threshold > 0:
        raise RequestError(f"threshold must be positive, got {threshold}")

    budget, text_schedule = _scalar(inputs, "anchors"), _scalar(inputs, "schedule")
    if budget is not None and text_schedule is not None:
        raise RequestError("give either 'schedule' (the anchor steps) or 'anchors' (how many), not both")
    # a field that would change nothing is refused, as `Pipeline.generate` does: the client meant something else
    if threshold is not None and policy not in THRESHOLD_POLICIES:
        raise RequestError(f"'threshold' applies to {', '.join(THRESHOLD_POLICIES)}, not {policy}")
    if policy in THRESHOLD_POLICIES and (budget is not None or text_schedule is not None):
        raise RequestError(f"{policy} chooses its anchors online: send no 'schedule' or 'anchors'")
    if (text_schedule or "").strip() == "full" and policy not in ("disca", "full"):
        raise RequestError(f"schedule 'full' runs every step full: policy {policy} would do nothing")
    if policy == "full" or (text_schedule or "").strip() == "full":
        anchors = "full"
    elif policy in THRESHOLD_POLICIES:
        anchors = None
    elif text_schedule is not None:
        anchors = check_anchors(parse_anchors(text_schedule), steps)
    elif budget is not None:
        anchors = budget_anchors(bundle.manifest, steps, int(budget))[0]  # the list now: equal lists batch together
    else:
        if steps != schedule.steps:
            raise RequestError(
                f"the bundle's default anchors are for {schedule.steps} steps, not {steps}: "
                f"send 'schedule' or 'anchors' with 'steps'"
            )
        anchors = schedule.anchors

    ranges = bundle.ranges
    frames = _scalar(inputs, "frames", ranges.frames[1])
    height = _scalar(inputs, "height", ranges.height[1])
    width = _scalar(inputs, "width", ranges.width[1])
    ranges.check(bundle.patch, frames=frames, height=height, width=width, text_len=text.shape[0])
    seed = _scalar(inputs, "seed", 0)
    if not 0 <= seed < 2**63:
        raise RequestError(f"seed must be a non-negative integer, got {seed}")
    return ClipRequest(text, int(seed), int(steps), float(shift), anchors, policy, threshold, frames, height, width)
