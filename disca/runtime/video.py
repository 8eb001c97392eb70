"""Write a generated latent as a video (.gif, .mp4) or as the raw array (.npy).

Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from disca._atomic import check_writable, current_umask, sigterm_as_exit
from disca.errors import DiscaError
from disca.runtime.inputs import positive_int

FORMATS = (".gif", ".mp4", ".npy")


def to_frames(latent: np.ndarray, upscale: int = 1) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> (F, H, B*W, 3) uint8: the batch side by side."""
    if latent.ndim != 5 or latent.shape[1] != 3:
        raise DiscaError(
            f"only a 3-channel (RGB pixel-space) latent can be written as a video, got shape {latent.shape}: "
            "write .npy and decode it with your VAE"
        )
    check_frames_size(latent.shape, upscale)
    x = np.concatenate(list(latent), axis=-1)  # (3, F, H, B*W)
    x = np.clip((x.transpose(1, 2, 3, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    if upscale > 1:
        x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return x


MAX_FRAMES_BYTES = 1 << 32  # 4 GiB of 8-bit frames: far above any clip worth a GIF, below an allocation that kills


def check_frames_size(shape, upscale: int) -> None:
    """The written frames of a (B, C, F, H, W) latent at `upscale` fit in memory (checked before a run)."""
    b, _, f, h, w = shape
    size = b * f * h * w * 3 * upscale * upscale
    if size > MAX_FRAMES_BYTES:
        raise DiscaError(
            f"--upscale {upscale} makes {f} frames of {h * upscale}x{b * w * upscale} pixels ({size / 2**30:.0f} GiB): "
            "lower --upscale, or write .npy and resize it yourself"
        )


def check_path(path) -> str:
    """The output's format (its suffix), or a DiscaError: check before a run (format and writability), not after it."""
    ext = Path(path).suffix.lower()
    if not ext and Path(path).name.startswith(".") and Path(path).name.lower() in FORMATS:
        raise DiscaError(f"cannot write {Path(path).name}: give the file a name, e.g. clip{Path(path).name}")
    if ext not in FORMATS:
        raise DiscaError(f"cannot write {Path(path).name}: the output must end in one of {', '.join(FORMATS)}")
    check_writable(path, "output")
    return ext


def write(path, latent: np.ndarray, fps: int = 8, upscale: int = 1) -> Path:
    path = Path(path)
    fps, upscale = positive_int("fps", fps), positive_int("upscale", upscale)
    ext = check_path(path)
    frames = None if ext == ".npy" else to_frames(latent, upscale)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():  # SIGTERM removes the temporary file as Ctrl-C does
        _write(path, ext, latent, frames, fps)
    return path


def _write(path: Path, ext: str, latent: np.ndarray, frames, fps: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=ext, dir=path.parent)
    os.close(fd)
    try:
        if ext == ".npy":
            np.save(tmp, latent)
        else:
            import imageio.v2 as imageio

            if ext == ".gif":
                imageio.mimsave(tmp, list(frames), format="GIF", duration=1000 / fps, loop=0)
            else:
                imageio.mimsave(tmp, list(frames), format="FFMPEG", fps=fps, macro_block_size=1)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the output should not be
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
