"""Procedural text-to-video clips: one coloured shape moving on a plain background, with a prompt.

A clip is float32 (3, F, H, W) in [-1, 1] (RGB). The prompt grammar is fixed-length (five words):
"a <color> <shape> moving <left|right|up|down>" or "a <color> <shape> growing bigger".
Objects stay fully inside the frame so that the evaluator can read every attribute back.
Everything is deterministic given the numpy Generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disca.errors import DiscaError, InputError

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
MOTIONS = ("left", "right", "up", "down", "growing")

# Corners of the RGB cube in [-1, 1]: any two entries differ by 2 in at least one channel,
# and every entry has a channel at +1 while backgrounds stay below about -0.2.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "magenta": (1.0, -1.0, 1.0),
    "cyan": (-1.0, 1.0, 1.0),
}

_MOTION_PHRASE = {
    "left": ("moving", "left"),
    "right": ("moving", "right"),
    "up": ("moving", "up"),
    "down": ("moving", "down"),
    "growing": ("growing", "bigger"),
}
_PHRASE_MOTION = {phrase: motion for motion, phrase in _MOTION_PHRASE.items()}

VOCAB: list[str] = ["a", *COLORS, *SHAPES, "moving", "left", "right", "up", "down", "growing", "bigger"]
PROMPT_LENGTH = 5  # every prompt has exactly this many words
_INDEX = {word: i for i, word in enumerate(VOCAB)}

# Geometry, as fractions of the frame size (8-12 px across on 32x32).
_DIAMETER = (0.25, 0.375)
_GROW_START = (0.2, 0.25)  # growing objects start smaller ...
_GROW_FACTOR = (1.6, 2.0)  # ... and end 1.6-2x wider (2.6-4x the area)
_TRAVEL = (0.5, 1.0)  # fraction of the free track a moving object covers over the clip
_MARGIN = 1.0  # px kept free at the frame edge, so the border ring is background
_SUPERSAMPLE = 4  # anti-aliasing: coverage from a 4x4 sub-pixel grid


@dataclass
class Attributes:
    """What a prompt asks for. `None` appears only in evaluator output, for an attribute it cannot read."""

    color: str | None
    shape: str | None
    motion: str | None


def _unknown_word_error(word: str, prompt: str) -> DiscaError:
    return DiscaError(f"unknown word {word!r} in prompt {prompt!r}; known words: {', '.join(VOCAB)}")


def tokenize(prompt: str) -> list[int]:
    """Indices into VOCAB of the prompt's words (case-insensitive, whitespace-separated)."""
    if not isinstance(prompt, str):
        raise InputError(f"a prompt must be text, got {type(prompt).__name__}")
    ids = []
    for word in prompt.lower().split():
        if word not in _INDEX:
            raise _unknown_word_error(word, prompt)
        ids.append(_INDEX[word])
    return ids


def prompt_for(attrs: Attributes) -> str:
    """The prompt describing `attrs`, e.g. "a red circle moving left"."""
    _check_attributes(attrs)
    return " ".join(("a", attrs.color, attrs.shape, *_MOTION_PHRASE[attrs.motion]))


def parse_prompt(prompt: str) -> Attributes:
    """The attributes a prompt asks for; DiscaError on an unknown word or a prompt outside the grammar."""
    tokenize(prompt)  # unknown words first: that error lists the vocabulary
    words = prompt.lower().split()
    if (
        len(words) != PROMPT_LENGTH
        or words[0] != "a"
        or words[1] not in COLORS
        or words[2] not in SHAPES
        or tuple(words[3:]) not in _PHRASE_MOTION
    ):
        raise DiscaError(
            f"prompt {prompt!r} does not follow the grammar 'a <color> <shape> moving <left|right|up|down>' "
            f"or 'a <color> <shape> growing bigger' (colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)})"
        )
    return Attributes(color=words[1], shape=words[2], motion=_PHRASE_MOTION[tuple(words[3:])])


def random_attributes(rng: np.random.Generator) -> Attributes:
    """A uniformly random colour, shape and motion."""
    return Attributes(
        color=COLORS[rng.integers(len(COLORS))],
        shape=SHAPES[rng.integers(len(SHAPES))],
        motion=MOTIONS[rng.integers(len(MOTIONS))],
    )


def _check_attributes(attrs: Attributes) -> None:
    for value, known, what in (
        (attrs.color, COLORS, "color"),
        (attrs.shape, SHAPES, "shape"),
        (attrs.motion, MOTIONS, "motion"),
    ):
        if value not in known:
            raise DiscaError(f"unknown {what} {value!r}; known: {', '.join(known)}")


def _coverage(shape: str, cx: float, cy: float, diameter: float, size: int) -> np.ndarray:
    """Fraction of each pixel (size, size) covered by the shape; pixel (i, j) spans [j, j+1] x [i, i+1]."""
    fine = (np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    x, y = fine[None, :], fine[:, None]
    r = diameter / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    else:  # triangle, apex up, base = height = diameter: the half-width grows by 1/2 px per px downwards
        top = cy - r
        inside = (y <= cy + r) & (np.abs(x - cx) <= (y - top) / 2)
    return inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def _trajectory(motion: str, rng: np.random.Generator, frames: int, size: int):
    """Per-frame centre x, centre y and diameter, in px; the object stays inside the margin throughout."""
    t = np.linspace(0.0, 1.0, frames)
    if motion == "growing":
        d0 = rng.uniform(*_GROW_START) * size
        d1 = d0 * rng.uniform(*_GROW_FACTOR)
        lo, hi = _MARGIN + d1 / 2, size - _MARGIN - d1 / 2
        cx, cy = rng.uniform(lo, hi, size=2)
        return np.full(frames, cx), np.full(frames, cy), d0 + (d1 - d0) * t
    d = rng.uniform(*_DIAMETER) * size
    lo, hi = _MARGIN + d / 2, size - _MARGIN - d / 2
    track = hi - lo
    travel = rng.uniform(*_TRAVEL) * track
    # Start on the side opposite to the motion, with random slack, so the whole path is in frame.
    start = lo + rng.uniform(0.0, track - travel)
    along = start + travel * t
    if motion in ("left", "up"):
        along = lo + hi - along
    across = np.full(frames, rng.uniform(lo, hi))
    diameter = np.full(frames, d)
    return (along, across, diameter) if motion in ("left", "right") else (across, along, diameter)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark grey-ish (3, size, size) background: plain, low-amplitude noise, or faint stripes."""
    base = rng.uniform(-0.85, -0.35) + rng.uniform(-0.08, 0.08, size=3)
    bg = np.broadcast_to(base[:, None, None], (3, size, size)).copy()
    kind = rng.integers(3)
    if kind == 1:
        bg += rng.normal(0.0, 0.03, size=bg.shape)
    elif kind == 2:
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
        bg += rng.uniform(0.02, 0.06) * wave[None]
    return bg


def _check_draw(rng, **counts) -> None:
    """The generator and the sizes of a draw, as disca errors (a float or a bool size, or a legacy
    RandomState, used to fail deep inside numpy)."""
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be a non-negative integer, got {value!r}")


def render_clip(attrs: Attributes, rng: np.random.Generator, frames: int = 8, size: int = 32) -> np.ndarray:
    """A float32 (3, frames, size, size) clip in [-1, 1] showing `attrs`."""
    _check_attributes(attrs)
    _check_draw(rng, frames=frames, size=size)
    if frames < 2:
        raise DiscaError(f"a clip needs at least 2 frames to show motion, got frames={frames}")
    if size < 16:
        raise DiscaError(f"clip size must be at least 16 px, got size={size}")
    cx, cy, diameter = _trajectory(attrs.motion, rng, frames, size)
    bg = _background(rng, size)
    color = np.asarray(PALETTE[attrs.color])[:, None, None]
    clip = np.empty((3, frames, size, size))
    for f in range(frames):
        alpha = _coverage(attrs.shape, cx[f], cy[f], diameter[f], size)[None]
        clip[:, f] = bg * (1 - alpha) + color * alpha
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def sample_batch(
    rng: np.random.Generator, n: int, frames: int = 8, size: int = 32
) -> tuple[np.ndarray, list[str], list[Attributes]]:
    """n random clips (n, 3, frames, size, size) float32, their prompts and their attributes."""
    _check_draw(rng, n=n, frames=frames, size=size)
    attrs = [random_attributes(rng) for _ in range(n)]
    clips = (
        np.stack([render_clip(a, rng, frames, size) for a in attrs])
        if n
        else np.zeros((0, 3, frames, size, size), np.float32)
    )
    return clips, [prompt_for(a) for a in attrs], attrs
