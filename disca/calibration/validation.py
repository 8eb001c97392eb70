"""`disca-export validate`: is this bundle fit to deploy? Parity of every graph variant on
every available backend, and DisCa end to end, against thresholds stored in the manifest.

The reference is PyTorch fp32 when the bundle carries its weights (and torch is installed),
otherwise the bundle's fp32 ONNX graph on ONNX Runtime CPU (itself validated against
PyTorch at export). Usable as a deployment gate: `ok` is False when anything fails.
"""

from __future__ import annotations

import numpy as np

from disca.bundle import Bundle
from disca.calibration.dataset import CalibrationSet, sample_all, sample_disca, uses_task_vocabulary
from disca.errors import DiscaError
from disca.exporter.precision import TOLERANCES
from disca.exporter.validate import compare
from disca.metrics import psnr
from disca.runtime.backends import get_backend
from disca.spec import dummy_inputs, export_shapes

DEFAULT_THRESHOLDS = {"min_psnr_db": 25.0, "max_adherence_drop": 0.02}


def thresholds(bundle: Bundle, **given: float | None) -> dict:
    """The gate's limits: the defaults, or the caller's (`given`, e.g. `min_psnr_db=30`). The bundle's stored
    `thresholds` may tighten them, never loosen them: the bundle is what is under test."""
    limits = {k: v if given.get(k) is None else float(given[k]) for k, v in DEFAULT_THRESHOLDS.items()}
    stored = bundle.manifest.get("thresholds") or {}
    if "min_psnr_db" in stored:
        limits["min_psnr_db"] = max(limits["min_psnr_db"], stored["min_psnr_db"])
    if "max_adherence_drop" in stored:
        limits["max_adherence_drop"] = min(limits["max_adherence_drop"], stored["max_adherence_drop"])
    return limits


def _reference(bundle: Bundle):
    """(name, backend) of the fp32 reference."""
    try:
        import torch  # noqa: F401

        if bundle.weights_dir is not None:
            return "PyTorch fp32", get_backend("torch", bundle)
    except ImportError:
        pass
    return "ONNX Runtime CPU, fp32 graph (no PyTorch weights in the bundle)", get_backend("onnxruntime", bundle)


def _candidates(bundle: Bundle, backends) -> list[tuple[str, str, dict]]:
    """(backend, precision, options) pairs this bundle can run."""
    out = []
    for name in backends:
        if name == "onnxruntime":
            precisions = list(bundle.manifest["graphs"]["full"]["variants"])
        elif name == "torch":
            precisions = ["fp32"] if bundle.weights_dir is not None else []
        else:  # tensorrt: the precisions with both engines built
            built = bundle.manifest.get("engines", {})
            precisions = [p for p in ("fp16", "fp8") if f"full.{p}" in built and f"predictor.{p}" in built]
        out += [(name, p, {} if name == "torch" else {"precision": p}) for p in precisions]
    return out


def _graph_outputs(backend, feeds: dict) -> dict[str, np.ndarray]:
    arrays = {k: backend.asarray(v) for k, v in feeds.items()}
    velocity, cache = backend.full(arrays["latent"], arrays["t"], arrays["r"], arrays["text"])
    predicted = backend.predict(arrays["latent"], arrays["t"], arrays["r"], arrays["text"], cache)
    return {
        "full.velocity": backend.to_numpy(velocity),
        "full.hidden": backend.to_numpy(cache),
        "predictor.velocity": backend.to_numpy(predicted),
    }


def validate_bundle(
    bundle_path, cal: CalibrationSet, backends=("onnxruntime",), log=lambda msg: None, limits: dict | None = None
) -> dict:
    """`limits`: `thresholds(bundle, ...)`; the defaults, tightened by the bundle, when None."""
    bundle = Bundle.open(bundle_path)
    limits = thresholds(bundle) if limits is None else limits
    ref_name, ref_backend = _reference(bundle)
    feeds = [
        dummy_inputs(bundle.specs["full"], dims, bundle.patch, seed=i)
        for i, dims in enumerate(export_shapes(bundle.ranges))
    ]
    with ref_backend:
        reference = [_graph_outputs(ref_backend, f) for f in feeds]
    report = {"bundle": str(bundle.path), "reference": ref_name, "thresholds": limits, "parity": [], "end_to_end": []}

    sched = bundle.schedule
    task = uses_task_vocabulary(bundle)
    with get_backend("onnxruntime", bundle) as ort_fp32:
        full_ref = sample_all(ort_fp32, cal, steps=sched.steps, shift=sched.shift)
    full_adherence = _adherence(full_ref, cal) if task else None

    for name in backends:  # a backend asked for that has nothing to check here is said, not passed over
        if not any(c[0] == name for c in _candidates(bundle, [name])):
            why = {"torch": "the bundle has no PyTorch weights", "tensorrt": "no TensorRT engines are built"}
            reason = why.get(name, "nothing to run") + " (see disca-export build / onnx)"
            report["parity"].append({"backend": name, "precision": "-", "skipped": reason})
            log(f"  {name}: skipped ({reason})")
    for name, precision, options in _candidates(bundle, backends):
        try:
            backend = get_backend(name, bundle, **options).activate()
        except DiscaError as e:
            report["parity"].append({"backend": name, "precision": precision, "skipped": str(e)})
            log(f"  {name} {precision}: skipped ({e})")
            continue
        with backend:
            tol = TOLERANCES[precision]
            for dims, f, ref in zip(export_shapes(bundle.ranges), feeds, reference):
                for key, got in _graph_outputs(backend, f).items():
                    c = compare(key.split(".")[0], key.split(".")[1], got, ref[key])
                    ok = c.rel_l2 <= tol.get("rel_l2", np.inf) and c.cosine >= tol.get("cosine", -np.inf)
                    row = {"backend": name, "precision": precision, "output": key, **c.to_dict(), "dims": dims}
                    report["parity"].append({**row, "tolerance": tol, "ok": bool(ok)})
            if name == "onnxruntime":  # end to end: DisCa (default schedule) against all-full fp32
                disca = sample_disca(backend, cal, bundle.manifest, sched)
                row = {"backend": name, "precision": precision, "anchors": sched.anchors}
                row["psnr_db"] = round(psnr(disca, full_ref), 3)
                ok = row["psnr_db"] >= limits["min_psnr_db"]
                if task:
                    row["adherence"], row["adherence_full_fp32"] = _adherence(disca, cal), full_adherence
                    ok = ok and row["adherence"] >= full_adherence - limits["max_adherence_drop"]
                report["end_to_end"].append({**row, "ok": bool(ok)})
        worst = [p for p in report["parity"] if p.get("backend") == name and p.get("precision") == precision]
        log(f"  {name} {precision}: parity {'ok' if all(p['ok'] for p in worst) else 'FAILED'}")
    checked = {p["backend"] for p in report["parity"] if "skipped" not in p}
    report["unchecked"] = [name for name in backends if name not in checked]  # asked for, not run: not a pass
    report["ok"] = (
        not report["unchecked"]
        and all(p.get("ok", True) for p in report["parity"])
        and all(e["ok"] for e in report["end_to_end"])
    )
    return report


def _adherence(latents: np.ndarray, cal: CalibrationSet) -> float:
    from disca.task import score

    return round(score(np.clip(latents, -1, 1), cal.prompts)["all"], 4)
