"""Sampling schedule: flow-matching sigmas, and the policy that picks full vs cached steps."""

from __future__ import annotations

import numpy as np

from disca.bundle import Schedule
from disca.errors import ScheduleError

# The official DisCa T2V anchor lists for 20 steps (8 and 10 anchors).
OFFICIAL_ANCHORS = {(20, 8): [0, 1, 2, 5, 9, 13, 17, 19], (20, 10): [0, 1, 2, 5, 9, 11, 13, 15, 17, 19]}
DEFAULT_SCHEDULE = Schedule(steps=20, shift=5.0, anchors=OFFICIAL_ANCHORS[(20, 8)])


def sigmas(steps: int, shift: float) -> np.ndarray:
    """steps + 1 noise levels from 1 (noise) to 0 (data), shifted as s*sigma / (1 + (s-1)*sigma)."""
    if steps < 1:
        raise ScheduleError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ScheduleError(f"shift must be > 0, got {shift}")
    s = np.linspace(1.0, 0.0, steps + 1)
    return shift * s / (1 + (shift - 1) * s)


def check_anchors(anchors, steps: int) -> list[int]:
    """Sorted, unique, within 0..steps-1, and step 0 an anchor (there is no cache before it)."""
    anchors = list(anchors)
    if not anchors:
        raise ScheduleError("the anchor schedule is empty; step 0 at least must be an anchor")
    if any(not isinstance(a, int | np.integer) for a in anchors):
        raise ScheduleError(f"anchor steps must be integers, got {anchors}")
    if anchors != sorted(set(anchors)):
        raise ScheduleError(f"anchor steps must be sorted and unique, got {anchors}")
    if anchors[0] != 0:
        raise ScheduleError(f"step 0 must be an anchor (there is no cache before it), got {anchors}")
    if anchors[-1] >= steps:
        raise ScheduleError(f"anchor step {anchors[-1]} is out of range for {steps} steps (0..{steps - 1})")
    return [int(a) for a in anchors]


def parse_anchors(text: str) -> list[int]:
    """'0,1,2,5' -> [0, 1, 2, 5]"""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ScheduleError(f"schedule must be comma-separated step numbers like 0,1,2,5,9, got {text!r}") from None


class Policy:
    """Decides, step by step, whether to run the full DiT (refresh the cache) or the predictor."""

    name = "base"

    def reset(self, steps: int) -> None:
        self.steps = steps

    def is_full(self, step: int) -> bool:
        raise NotImplementedError


class FullPolicy(Policy):
    """Every step runs the full DiT (the quality reference)."""

    name = "full"

    def is_full(self, step: int) -> bool:
        return True


class DiscaPolicy(Policy):
    """Anchor steps run the full DiT; the others run the learned predictor on the cache."""

    name = "disca"

    def __init__(self, anchors):
        self.anchors = list(anchors)

    def reset(self, steps: int) -> None:
        super().reset(steps)
        self._anchors = set(check_anchors(self.anchors, steps))

    def is_full(self, step: int) -> bool:
        return step in self._anchors


POLICIES = {"disca": DiscaPolicy, "full": FullPolicy}


def make_policy(name: str, anchors=None) -> Policy:
    if name == "disca":
        return DiscaPolicy(anchors if anchors is not None else DEFAULT_SCHEDULE.anchors)
    if name == "full":
        return FullPolicy()
    raise ScheduleError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
