"""The procedural text-to-video task: clips of one coloured shape moving, their prompts, and an analytic
evaluator of prompt adherence. numpy only."""

from disca.task.clips import (
    COLORS,
    MOTIONS,
    PALETTE,
    PROMPT_LENGTH,
    SHAPES,
    VOCAB,
    Attributes,
    parse_prompt,
    prompt_for,
    random_attributes,
    render_clip,
    sample_batch,
    tokenize,
)
from disca.task.degrade import box_blur, degrade
from disca.task.evaluate import read_clip, score

__all__ = [
    "COLORS",
    "MOTIONS",
    "PALETTE",
    "PROMPT_LENGTH",
    "SHAPES",
    "VOCAB",
    "Attributes",
    "box_blur",
    "degrade",
    "parse_prompt",
    "prompt_for",
    "random_attributes",
    "read_clip",
    "render_clip",
    "sample_batch",
    "score",
    "tokenize",
]
