"""`disca-export onnx` end to end: the export, with the sampling runs it needs around it.

`disca.exporter` turns modules into a validated bundle and depends on the models and the bundle
only. What needs sampling runs of the model is orchestrated here, one level up: the graph inputs
recorded from real runs that FP8 ranges come from, the TeaCache polynomial fitted on the exported
graphs, and each reduced-precision variant's end-to-end PSNR. Needs the `torch` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from disca.bundle import Bundle, Schedule
from disca.calibration.teacache import default_set, fit_teacache
from disca.calibration.trajectories import record_inputs
from disca.errors import ConfigError
from disca.exporter import export_bundle
from disca.metrics import psnr
from disca.models import ModelConfig
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
from disca.runtime.backends.torch_backend import TorchBackend
from disca.runtime.sampler import denoise
from disca.runtime.schedule import DEFAULT_SCHEDULE, DiscaPolicy
from disca.spec import DIMS, ShapeRanges


def build_bundle(
    cfg: ModelConfig,
    dit,
    predictor,
    out,
    *,
    schedule: Schedule = DEFAULT_SCHEDULE,
    ranges: ShapeRanges | None = None,
    text=None,
    precisions=("fp32",),
    log=lambda msg: None,
    **export_options,
) -> Path:
    """Export, validate and calibrate a bundle at `out` (see `disca.exporter.export_bundle` for the
    options). A failure at any stage leaves nothing at `out`. -> the bundle path."""
    ranges = ranges or ShapeRanges()

    def fp8_inputs() -> dict:
        return calibration_inputs(cfg, dit, predictor, text, ranges, schedule)

    def finish(directory: Path, manifest: dict) -> None:
        if "first" in manifest["graphs"]:
            manifest["teacache"] = teacache_fit(directory, log)
        for p in precisions:
            if p == "fp32":
                continue
            db = end_to_end_psnr(directory, p, schedule, ranges)
            log(f"  end to end ({p} vs fp32 DisCa on ORT CPU): PSNR {db:.1f} dB")
            for g in manifest["graphs"].values():
                if p in g["variants"]:  # not the fp32-only graphs (rest, tail)
                    g["variants"][p]["validation"]["end_to_end_psnr_db"] = db

    return export_bundle(
        cfg,
        dit,
        predictor,
        out,
        schedule=schedule,
        ranges=ranges,
        text=text,
        precisions=precisions,
        log=log,
        fp8_inputs=fp8_inputs,
        finish=finish,
        **export_options,
    )


def calibration_inputs(cfg: ModelConfig, dit, predictor, text, ranges: ShapeRanges, schedule: Schedule, n: int = 4):
    """Both graphs' inputs over `n` real sampling runs of the model at the ranges' optimum shape.

    Texts are random word sequences of the model's vocabulary (random embeddings without one).
    """
    rng = np.random.default_rng(0)
    C = cfg.dit.in_channels
    frames, height, width, text_len = (getattr(ranges, d)[1] for d in ("frames", "height", "width", "text_len"))
    latents = [rng.standard_normal((1, C, frames, height, width), dtype=np.float32) for _ in range(n)]
    if text is not None:
        with torch.no_grad():
            ids = torch.from_numpy(rng.integers(1, len(cfg.vocab), size=(n, 1, text_len)))
            texts = [text.table(i).numpy() for i in ids]
    else:
        texts = [rng.standard_normal((1, text_len, cfg.dit.text_dim), dtype=np.float32) for _ in range(n)]
    backend = TorchBackend.from_modules(dit, predictor)
    return record_inputs(backend, latents, texts, steps=schedule.steps, shift=schedule.shift, anchors=schedule.anchors)


def end_to_end_psnr(bundle_dir: Path, precision: str, schedule: Schedule, ranges: ShapeRanges, seed: int = 0) -> float:
    """PSNR (dB) of a DisCa run on ORT CPU with the `precision` graphs against the same run in FP32."""
    bundle = Bundle.open(bundle_dir)
    rng = np.random.default_rng(seed)
    dims = {d: getattr(ranges, d)[1] for d in DIMS}
    latent = rng.standard_normal((1, bundle.channels, dims["frames"], dims["height"], dims["width"]), dtype=np.float32)
    text = rng.standard_normal((1, dims["text_len"], bundle.text_dim), dtype=np.float32)
    outs = []
    for p in ("fp32", precision):
        with OnnxRuntimeBackend(bundle, precision=p) as backend:
            out, _ = denoise(
                backend, latent, text, steps=schedule.steps, shift=schedule.shift, policy=DiscaPolicy(schedule.anchors)
            )
        outs.append(out)
    return psnr(outs[1], outs[0])


def teacache_fit(bundle_dir: Path, log, samples: int = 4) -> dict | None:
    """TeaCache's rescaling polynomial from all-full runs of the exported fp32 graphs on ORT CPU."""
    bundle = Bundle.open(bundle_dir)
    cal = default_set(bundle, samples)
    if cal is None:
        log("  teacache: no built-in prompts for this vocabulary: fit it with `disca-export teacache --prompts`")
        return None
    try:
        with OnnxRuntimeBackend(bundle) as backend:
            record = fit_teacache(backend, cal, steps=bundle.schedule.steps, shift=bundle.schedule.shift)
    except ConfigError as e:  # e.g. an overfit on the few runs of an export: the bundle is fine without it
        log(f"  teacache: not fitted ({e}); fit it with `disca-export teacache --samples 16`")
        return None
    log(f"  teacache: rescaling polynomial fitted on {record['points']} step pairs of {samples} runs")
    return record
