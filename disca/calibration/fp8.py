"""FP8 calibration of a bundle from real sampling trajectories, with a per-layer sensitivity rule.

1. Record both graphs' inputs over all-full and DisCa runs of the bundle's own FP32 graphs
   (ONNX Runtime) on the calibration set.
2. "max" ranges of every FP8 target layer's input, from those inputs.
3. Sensitivity: quantize one layer at a time (the rest FP16) and compare the graph's velocity
   with FP32 on a sample of the recorded inputs; layers whose cosine falls below the
   threshold stay FP16 (overridable both ways).
4. Write the FP8 variants of both graphs into the bundle (atomically) and check DisCa end to end.
Needs onnx (the export extra), not torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from disca.bundle import Bundle, file_entry, fresh_name
from disca.calibration.dataset import CalibrationSet
from disca.calibration.trajectories import record_inputs
from disca.errors import ConfigError
from disca.exporter import precision as prec
from disca.exporter.validate import compare
from disca.runtime.backends.onnxrt import OnnxRuntimeBackend

DEFAULT_MIN_COSINE = 0.9995


@dataclass
class LayerSensitivity:
    graph: str
    layer: str  # ONNX node name
    module: str  # torch module it came from
    amax: float
    cosine: float
    psnr_db: float
    fp8: bool = True


@dataclass
class Fp8Report:
    layers: list[LayerSensitivity] = field(default_factory=list)
    recorded: dict = field(default_factory=dict)  # graph -> number of recorded input sets

    def kept_fp16(self) -> list[LayerSensitivity]:
        return [x for x in self.layers if not x.fp8]


def _subsample(feeds: list[dict], n: int) -> list[dict]:
    idx = np.linspace(0, len(feeds) - 1, min(n, len(feeds))).round().astype(int)
    return [feeds[i] for i in sorted(set(idx))]


def _run(model_or_path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    src = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["velocity"], f)[0].ravel() for f in feeds])


def calibrate_fp8(
    bundle_path,
    cal: CalibrationSet,
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    keep_fp16=(),
    force_fp8=(),
    sensitivity_samples: int = 16,
    log=lambda msg: None,
) -> Fp8Report:
    """Calibrate and write the fp8 variants of both graphs. -> the per-layer report."""
    import onnx

    bundle = Bundle.open(bundle_path)
    sched = bundle.schedule
    targets = {  # layer name -> module path, per graph
        g: {
            n.name: prec.module_path(n)
            for n in prec.fp8_targets(onnx.load(str(bundle.graph_path(g)), load_external_data=False))
        }
        for g in ("full", "predictor")
    }
    known = {x for t in targets.values() for x in (*t, *t.values())}
    for option, given in (("--keep-fp16", keep_fp16), ("--force-fp8", force_fp8)):
        unknown = sorted(set(given) - known)
        if unknown:  # a typo would silently calibrate as if the option were not there
            examples = ", ".join(sorted(set(targets["full"].values()))[:4])
            raise ConfigError(
                f"{option}: no layer is named {unknown[0]!r} in the full or predictor graph; give layer names or "
                f"module paths as the calibration report lists them (e.g. {examples})"
            )
    log(f"recording graph inputs over {len(cal)} all-full and DisCa runs...")
    calls = {"full": [], "predictor": []}
    with OnnxRuntimeBackend(bundle) as backend:
        for _, latents, texts in cal.batches(1):
            rec = record_inputs(
                backend, [latents], [texts], steps=sched.steps, shift=sched.shift, anchors=sched.anchors
            )
            for g in calls:
                calls[g] += rec[g]
    report = Fp8Report(recorded={g: len(v) for g, v in calls.items()})
    variants = {}
    for graph in ("full", "predictor"):
        src = bundle.graph_path(graph, "fp32")
        amax = prec.activation_amax(src, calls[graph])
        fp16 = prec.to_fp16(onnx.load(str(src)))
        probe = _subsample(calls[graph], sensitivity_samples)
        reference = _run(src, probe)
        paths = targets[graph]
        log(f"{graph}: sensitivity of {len(amax)} layers on {len(probe)} recorded inputs...")
        for name in amax:
            got = _run(prec.to_fp8(fp16, amax, only={name}), probe)
            c = compare(graph, "velocity", got, reference)
            ok = (c.cosine >= min_cosine or paths[name] in force_fp8 or name in force_fp8) and not (
                paths[name] in keep_fp16 or name in keep_fp16
            )
            db = float(10 * np.log10(np.abs(reference).max() ** 2 / max(np.mean((got - reference) ** 2), 1e-30)))
            report.layers.append(LayerSensitivity(graph, name, paths[name], amax[name], c.cosine, db, ok))
        chosen = {x.layer for x in report.layers if x.graph == graph and x.fp8}
        variants[graph] = (prec.to_fp8(fp16, amax, only=chosen), len(chosen), len(amax))
    _write_variants(bundle, variants, report, min_cosine, log)
    return report


def _write_variants(bundle: Bundle, variants: dict, report: Fp8Report, min_cosine: float, log) -> None:
    """New files under fresh names, then one atomic manifest switch, then the replaced fp8 files removed:
    a kill at any moment leaves the bundle as before or as after."""
    manifest = copy.deepcopy(bundle.manifest)
    with bundle.staging(log) as stage:
        for graph, (model, n_fp8, n_all) in variants.items():
            rel = fresh_name(f"{graph}.fp8", ".onnx")
            prec.save_model(model, stage / rel)
            old = manifest["graphs"][graph]["variants"].get("fp8")
            if old:
                for f in (old["file"], old["file"] + ".data"):
                    manifest["files"].pop(f, None)
            for f in (rel, rel + ".data"):
                manifest["files"][f] = file_entry(stage, f)
            fp32 = manifest["graphs"][graph]["variants"]["fp32"]
            manifest["graphs"][graph]["variants"]["fp8"] = {
                "file": rel,
                "opset": fp32["opset"],
                "precision": "fp8",
                "produced_by": (
                    f"disca-export calibrate: FP8 E4M3 Q/DQ on {n_fp8} of {n_all} block Linear layers, max "
                    f"calibration over {report.recorded[graph]} inputs recorded from real sampling runs; layers "
                    f"whose solo quantization gave cosine < {min_cosine} kept fp16; the rest fp16"
                ),
                "calibration": [x.__dict__ for x in report.layers if x.graph == graph],
            }
            log(f"  {rel}: {n_fp8} of {n_all} layers in FP8")
        bundle.commit(manifest, stage)
