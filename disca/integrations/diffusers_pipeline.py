"""A diffusers `WanPipeline` around disca's runtime: its text encoder and VAE, disca's denoising loop.

    from diffusers import WanPipeline
    from disca.runtime import Pipeline
    from disca.integrations.diffusers_pipeline import wan_generate

    pipe = WanPipeline.from_pretrained(WAN_DIR, transformer=None)    # tokenizer, umT5, VAE, no transformer
    with Pipeline.load("bundles/wan", backend="tensorrt") as disca:   # or "onnxruntime"
        out = wan_generate(pipe, disca, "a cat surfing", height=480, width=832, num_frames=81)
    out.frames  # what pipe(..., output_type="np").frames would be; out.stats: full / predictor calls, ms

The pipeline keeps what it owns: prompt encoding (`pipe.encode_prompt`), the initial noise
(`pipe.prepare_latents`, so a `generator` gives the same noise as the pipeline's own call) and the
VAE decode with the VAE's latent normalisation. Only the loop is disca's: anchor steps run the
exported transformer, the others the predictor, with disca's flow-matching Euler update on the grid
sigma_i = s*u / (1 + (s-1)*u), u = 1 - i/steps (shift s: the bundle's, or `shift`).

No classifier-free guidance: a DisCa student has the guidance distilled in (one pass per step).
Prompts are padded to `max_sequence_length` as Wan does, so the bundle's text-length range must
contain it (export with e.g. `--text-len 1:226:226`). Nothing here imports diffusers: `pipe` is any
object with WanPipeline's `encode_prompt`, `prepare_latents`, `vae` and `video_processor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disca.errors import InputError, ShapeError
from disca.runtime.sampler import RunStats


@dataclass
class WanResult:
    frames: object  # the decoded video as `output_type` gives it (np: (B, F, H, W, 3) in [0, 1]); None for "latent"
    latents: np.ndarray  # (B, C, F', H', W') the denoised latent, before the VAE's de-normalisation
    stats: RunStats


OUTPUT_TYPES = ("np", "pt", "pil", "latent")  # diffusers' VideoProcessor types, and the latent undecoded


def wan_generate(
    pipe,
    disca,
    prompt: str | list[str] | None = None,
    *,
    prompt_embeds=None,
    height: int = 480,
    width: int = 832,
    num_frames: int = 81,
    steps: int | None = None,
    shift: float | None = None,
    anchors=None,
    policy: str = "disca",
    generator=None,
    latents=None,
    max_sequence_length: int = 226,
    output_type: str = "np",
) -> WanResult:
    """Generate with `pipe`'s text encoder and VAE and `disca`'s (a `disca.runtime.Pipeline`) loop.

    anchors / policy / steps / shift: as `disca.runtime.Pipeline.denoise` ("full" runs every step full).
    prompt_embeds: (B, L, Dt) umT5 states instead of a prompt (then no tokenizer or text encoder is needed).
    """
    import torch

    if output_type not in OUTPUT_TYPES:  # before the denoising loop, not after it
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if prompt_embeds is not None and not isinstance(prompt_embeds, torch.Tensor):
        raise InputError(f"prompt_embeds must be a torch tensor (B, L, Dt), got {type(prompt_embeds).__name__}")
    channels = disca.bundle.channels
    if getattr(pipe.vae.config, "z_dim", channels) != channels:
        raise ShapeError(f"the VAE's latents have {pipe.vae.config.z_dim} channels, the bundle's model {channels}")
    with torch.no_grad():
        text, _ = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            prompt_embeds=prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=pipe._execution_device,
        )
        noise = pipe.prepare_latents(
            text.shape[0],
            channels,
            height,
            width,
            num_frames,
            torch.float32,
            pipe._execution_device,
            generator,
            latents,
        )
    final, stats = disca.denoise(
        noise.float().cpu().numpy(),
        text.float().cpu().numpy(),
        steps=steps,
        shift=shift,
        anchors=anchors,
        policy=policy,
    )
    frames = None if output_type == "latent" else decode(pipe, final, output_type)
    return WanResult(frames, final, stats)


def decode(pipe, latents: np.ndarray, output_type: str = "np"):
    """The pipeline's own VAE decode: undo the VAE's latent normalisation, decode, post-process."""
    import torch

    vae = pipe.vae
    device = next(vae.parameters()).device
    x = torch.from_numpy(latents).to(device, vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(x)
    std = torch.tensor(vae.config.latents_std).view(shape).to(x)
    with torch.no_grad():
        video = vae.decode(x * std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=output_type)
