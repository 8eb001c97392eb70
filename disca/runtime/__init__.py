"""The deploy side: bundle -> backend -> DisCa sampling. Needs numpy + onnxruntime only."""

from disca.runtime.pipeline import Pipeline, Result, demo_bundle
from disca.runtime.sampler import RunStats, denoise
from disca.runtime.schedule import DEFAULT_SCHEDULE, DiscaPolicy, FullPolicy, check_anchors, sigmas

__all__ = [
    "DEFAULT_SCHEDULE",
    "DiscaPolicy",
    "FullPolicy",
    "Pipeline",
    "Result",
    "RunStats",
    "check_anchors",
    "demo_bundle",
    "denoise",
    "sigmas",
]
