"""Read colour, shape and motion back from a clip analytically, and score clips against their prompts.

Per frame: the background colour is the median of the one-pixel border ring; the object's colour is the median
of the clip's most distinct pixels; each pixel's opacity `alpha` is its projection on the background->object
colour line, and the object is the largest 4-connected blob of alpha > 0.5. Colour is the nearest palette entry.
Shape comes from moments of the soft alpha, which survive blur far better than masks and bounding boxes do: the
apex-up triangle has a vertical skewness of about -0.57 (circle and square 0), and the square's mass sits on its
diagonals, a 4-fold angular harmonic about 0.43 (circle 0). Motion is the centroid trajectory and the trend of
the soft area. A clip without one plausible compact object (blank, noise) reads as all `None`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from disca.errors import DiscaError, InputError
from disca.task.clips import COLORS, PALETTE, Attributes, parse_prompt

_MIN_CONTRAST = 0.4  # object-to-background colour distance below which nothing is read
_MAX_AREA = 0.45  # an "object" covering more of the frame than this is not one
_MIN_AREA_PX = 3
_MIN_BLOB_SHARE = 0.7  # the largest blob must hold most of the foreground; noise shatters into many
_MAX_BG_RESIDUAL = 0.3  # median background distance, as a fraction of the contrast
_TRIANGLE_SKEW = -0.2  # triangles measure -0.6..-0.33 (clean..blurred+noisy), the others within +-0.1
_SQUARE_HARMONIC = 0.18  # squares measure 0.28..0.46, circles and triangles within +-0.08
_GROWTH = 1.6  # area ratio last/first: moving objects ~1, growing ones 2.6-4
_MIN_TRAVEL = 0.1  # fraction of the frame size; moving objects travel at least ~0.28

_PALETTE = np.array([PALETTE[c] for c in COLORS])
_UNKNOWN = Attributes(color=None, shape=None, motion=None)


def _border_median(x: np.ndarray) -> np.ndarray:
    """Median colour (3, F) of each frame's one-pixel border ring."""
    ring = np.concatenate([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], axis=-1)
    return np.median(ring, axis=-1)


def _shift_max(labels: np.ndarray) -> np.ndarray:
    """Max over each pixel and its 4 neighbours, over the last two axes."""
    out = labels.copy()
    out[..., 1:, :] = np.maximum(out[..., 1:, :], labels[..., :-1, :])
    out[..., :-1, :] = np.maximum(out[..., :-1, :], labels[..., 1:, :])
    out[..., :, 1:] = np.maximum(out[..., :, 1:], labels[..., :, :-1])
    out[..., :, :-1] = np.maximum(out[..., :, :-1], labels[..., :, 1:])
    return out


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of each frame's mask (F, H, W); label propagation, numpy only."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        grown = np.where(mask, _shift_max(labels), 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    blobs = np.zeros_like(mask)
    for f in range(mask.shape[0]):
        ids, counts = np.unique(labels[f][mask[f]], return_counts=True)
        if len(ids):
            blobs[f] = labels[f] == ids[np.argmax(counts)]
    return blobs


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow a mask by `steps` pixels (3x3 square structuring element per step)."""
    out = mask
    for _ in range(steps):
        grown = out.copy()
        grown[..., 1:, :] |= out[..., :-1, :]
        grown[..., :-1, :] |= out[..., 1:, :]
        grown2 = grown.copy()
        grown2[..., :, 1:] |= grown[..., :, :-1]
        grown2[..., :, :-1] |= grown[..., :, 1:]
        out = grown2
    return out


def _slope(values: np.ndarray, t: np.ndarray) -> float:
    """Least-squares slope of values against t."""
    tc = t - t.mean()
    return float(np.sum(tc * (values - values.mean())) / np.sum(tc * tc))


def _shape(soft: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> str:
    """Shape from the median over frames of two normalised moments of the soft alpha (F, H, W)."""
    h, w = soft.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    x = xx[None] - cx[:, None, None]
    y = yy[None] - cy[:, None, None]
    mass = soft.sum(axis=(1, 2))

    def mean(v: np.ndarray) -> np.ndarray:
        return (soft * v).sum(axis=(1, 2)) / mass

    skew = mean(y**3) / mean(y**2) ** 1.5
    harmonic = (mean((2 * x * y) ** 2) - mean((x * x - y * y) ** 2)) / mean((x * x + y * y) ** 2)
    if np.median(skew) < _TRIANGLE_SKEW:
        return "triangle"
    return "square" if np.median(harmonic) > _SQUARE_HARMONIC else "circle"


def read_clip(clip: np.ndarray) -> Attributes:
    """The colour, shape and motion a (3, F, H, W) clip in [-1, 1] shows; `None` where it cannot tell."""
    x = np.asarray(clip, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] != 3 or min(x.shape[1:]) < 2:
        raise DiscaError(f"read_clip expects one clip (3, F, H, W) with F, H, W >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        return _UNKNOWN
    _, frames, h, w = x.shape
    bg = _border_median(x)  # (3, F)
    diff = x - bg[:, :, None, None]
    dist = np.linalg.norm(diff, axis=0)  # (F, H, W)
    # The object covers >= ~2% of the clip's pixels, so the top 0.5% are inside it.
    peak = np.quantile(dist, 0.995)
    if peak < _MIN_CONTRAST:
        return _UNKNOWN
    core = dist >= 0.75 * peak
    fg = np.median(x[:, core], axis=1)  # (3,)
    color = COLORS[int(np.argmin(np.linalg.norm(_PALETTE - fg, axis=1)))]

    axis = fg[:, None] - bg  # (3, F): background -> object colour, per frame
    contrast2 = np.sum(axis * axis, axis=0)  # (F,)
    if np.min(contrast2) < _MIN_CONTRAST**2:
        return _UNKNOWN
    alpha = np.einsum("cfhw,cf->fhw", diff, axis) / contrast2[:, None, None]
    mask = alpha > 0.5
    blob = _largest_blob(mask)
    blob_px = blob.sum(axis=(1, 2))
    mask_px = mask.sum(axis=(1, 2))
    valid = (blob_px >= _MIN_AREA_PX) & (blob_px <= _MAX_AREA * h * w) & (blob_px >= _MIN_BLOB_SHARE * mask_px)
    if valid.sum() < max(2, -(-frames // 2)):
        return _UNKNOWN
    near = _dilate(blob, 2)
    # A clip is only readable if what lies outside the object is flat background.
    residual = np.median(dist[~near]) if np.any(~near) else np.inf
    if residual > _MAX_BG_RESIDUAL * np.sqrt(np.median(contrast2)):
        return _UNKNOWN

    t = np.flatnonzero(valid).astype(np.float64)
    soft = np.clip(alpha, 0.0, 1.0) * near  # soft area keeps blurred edges; the dilation keeps far noise out
    area = soft.sum(axis=(1, 2))[valid]
    yy, xx = np.mgrid[0:h, 0:w]
    cx = (soft * xx).sum(axis=(1, 2))[valid] / area
    cy = (soft * yy).sum(axis=(1, 2))[valid] / area
    shape = _shape(soft[valid], cx, cy)

    span = frames - 1
    growth = float(np.exp(_slope(np.log(area), t) * span))
    dx, dy = _slope(cx, t) * span, _slope(cy, t) * span
    if growth >= _GROWTH:
        motion = "growing"
    elif max(abs(dx), abs(dy)) < _MIN_TRAVEL * max(h, w):
        motion = None
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"  # image rows grow downwards
    return Attributes(color=color, shape=shape, motion=motion)


def score(clips: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, float]:
    """Per-attribute accuracy of clips against their prompts, "all" (every attribute right) and "n"."""
    if not hasattr(clips, "__len__") or isinstance(prompts, str) or not hasattr(prompts, "__len__"):
        raise InputError("score takes a sequence of clips and a list of prompts, one prompt per clip")
    if len(clips) != len(prompts):
        raise DiscaError(f"score got {len(clips)} clips but {len(prompts)} prompts")
    if len(prompts) == 0:
        raise DiscaError("score needs at least one clip")
    hits = {"color": 0, "shape": 0, "motion": 0, "all": 0}
    for clip, prompt in zip(clips, prompts, strict=True):
        want, got = parse_prompt(prompt), read_clip(clip)
        right = {k: getattr(got, k) == getattr(want, k) for k in ("color", "shape", "motion")}
        for k, ok in right.items():
            hits[k] += ok
        hits["all"] += all(right.values())
    n = len(prompts)
    return {**{k: v / n for k, v in hits.items()}, "n": n}
