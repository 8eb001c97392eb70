"""Export the DiT and its cache predictor to a bundle of two ONNX graphs.

Each graph is exported with the dynamo exporter from its declaration in
`disca.spec` (names, dynamic axes, ranges), then validated on ONNX Runtime CPU
against PyTorch at the export shape and at a second shape (which proves the
axes really are dynamic). The bundle is written to a temporary directory and
renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import disca
from disca import manifest as schema
from disca._atomic import atomic_directory
from disca.bundle import FORMAT, MANIFEST, SCHEMA_VERSION, Schedule, file_entry, json_default, refuse_non_bundle
from disca.errors import ConfigError, ShapeError
from disca.exporter.validate import check_graph
from disca.models import ModelConfig, num_params, save_checkpoint
from disca.models.graphs import FirstBlockGraph, FullGraph, HeadGraph, PredictorGraph, RestGraph, TailGraph
from disca.spec import GraphSpec, ShapeRanges, dummy_inputs, export_shapes, graph_specs

TEXT_TABLE = "text_embedding.npy"
OPSETS = (23, 20)  # 23: native Attention / RMSNormalization (TensorRT >= 10.14); 20: decomposed
# DBCache's split of the full pass: fp32 only for now (its FP8 ranges would need recorded probe outputs).
FP32_ONLY = ("rest", "tail")


def _dynamic_shapes(spec: GraphSpec, ranges: ShapeRanges, patch) -> dict:
    from torch.export import Dim

    def dim(name: str, p: int = 1):
        lo, _, hi = getattr(ranges, name)
        # torch.export wants min < max; a fixed size (`--text-len 8`) is kept dynamic one patch wider (a static dim
        # gets folded into the other dims' products) and the manifest's range, which the runtime enforces, stays N.
        hi = max(hi, lo + p)
        # A dim that must be a multiple of the patch is declared as p * (a free dim), so export can prove it.
        return Dim(name, min=lo, max=hi) if p == 1 else p * Dim(f"{name}_patches", min=lo // p, max=hi // p)

    dims = {"batch": dim("batch"), "text_len": dim("text_len")}
    for name, p in zip(("frames", "height", "width"), patch):
        dims[name] = dim(name, p)
    dims["tokens"] = Dim.AUTO  # a function of the others: let export derive it
    return {t.name: {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs}


def _name_dims(onnx_path: Path, spec: GraphSpec) -> None:
    """Give the graph's inputs/outputs the declared dim names (the exporter writes expressions like 2*h)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    declared = {t.name: t.shape for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, want in zip(value.type.tensor_type.shape.dim, declared[value.name]):
            if isinstance(want, str):
                dim.dim_param = want
    onnx.save(model, str(onnx_path))  # external data stays where it is


def export_graph(module, spec: GraphSpec, ranges: ShapeRanges, patch, opset: int, path: Path, verbose: bool) -> None:
    feeds = dummy_inputs(spec, export_shapes(ranges)[0], patch)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=_dynamic_shapes(spec, ranges, patch),
            external_data=True,
            verbose=verbose,
        )
    _name_dims(path, spec)


def share_weights_with_full(root: Path, name: str) -> None:
    """Point the `name` graph's weights at the full graph's external data where the bytes are the same
    (DBCache's `rest` and `tail` are pieces of the full DiT): the bundle stores them once. What the full
    graph lacks stays in the graph's own data file, rewritten (removed when nothing is left)."""
    import hashlib

    import onnx

    full = (root / "full.onnx.data").read_bytes()
    known = {}
    for init in onnx.load(str(root / "full.onnx"), load_external_data=False).graph.initializer:
        info = {e.key: e.value for e in init.external_data}
        if info.get("location") == "full.onnx.data":
            off, length = int(info.get("offset", 0)), int(info["length"])
            known.setdefault(hashlib.sha256(full[off : off + length]).digest(), off)
    path, own = root / f"{name}.onnx", root / f"{name}.onnx.data"
    model = onnx.load(str(path), load_external_data=False)
    data, kept = own.read_bytes(), bytearray()
    for init in model.graph.initializer:
        info = {e.key: e.value for e in init.external_data}
        if info.get("location") != own.name:
            continue
        off, length = int(info.get("offset", 0)), int(info["length"])
        raw = data[off : off + length]
        digest = hashlib.sha256(raw).digest()
        if digest in known:
            location, off = "full.onnx.data", known[digest]
        else:
            kept += b"\0" * (-len(kept) % 64)  # aligned, as onnx writes it
            location, off = own.name, len(kept)
            kept += raw
        del init.external_data[:]
        for key, value in (("location", location), ("offset", str(off)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))
    if kept:
        own.write_bytes(bytes(kept))
    else:
        own.unlink()


def _parity(name, session, module, spec, shapes, patch, tolerance, full_module) -> list:
    """check_graph at each of `shapes`; the predictor gets a real cache from the full graph."""
    results = []
    for i, dims in enumerate(shapes):
        feeds = dummy_inputs(spec, dims, patch, seed=i)
        if "hidden" in feeds and "text" in feeds:  # a real cache, as the runtime would pass it (the tail: random)
            with torch.no_grad():
                full_args = [torch.from_numpy(feeds[k]) for k in ("latent", "t", "r", "text")]
                feeds["hidden"] = full_module(*full_args)[1].numpy()
        results += check_graph(name, session, module, feeds, [o.name for o in spec.outputs], tolerance)
    return results


def _validation(tolerance: dict, shapes, parity) -> dict:
    return {
        "reference": "PyTorch fp32",
        "tolerance": tolerance,
        "shapes": shapes,
        "results": [p.to_dict() for p in parity],
    }


def export_bundle(
    cfg: ModelConfig,
    dit,
    predictor,
    out,
    *,
    text=None,
    opset: int = 23,
    ranges: ShapeRanges | None = None,
    schedule: Schedule,
    precisions=("fp32",),
    weights_note: str = "",
    include_weights: bool = True,
    verbose: bool = False,
    log=lambda msg: None,
    fp8_inputs: Callable[[], dict] | None = None,
    finish: Callable[[Path, dict], None] | None = None,
) -> Path:
    """Export, validate and write a bundle to `out`. -> the bundle path.

    `text`: the model's learned WordEmbedding, if any: its table goes into the bundle
    so that the runtime embeds prompts without torch.
    `precisions`: fp32 always, plus fp16 / fp8 variants of both graphs (see `precision.py`),
    each validated against PyTorch; FP8 ranges ("max" calibration) come from `fp8_inputs()`:
    {"full": [...], "predictor": [...]} graph inputs recorded from real sampling runs.
    `finish(directory, manifest)`: runs on the bundle as written, before it is renamed into
    place, and may add to the manifest (the TeaCache fit, end-to-end figures: `disca.build`).
    """
    import onnx
    import onnxruntime as ort

    from disca.exporter import precision as prec

    refuse_non_bundle(out)  # an existing bundle is replaced (atomically); anything else is never touched
    if opset not in OPSETS:
        raise ShapeError(f"opset {opset} is not supported; choose one of {OPSETS}")
    unknown = [p for p in precisions if p not in prec.PRECISIONS]
    if unknown:
        raise ShapeError(f"unknown precision {unknown[0]!r}; choose from {', '.join(prec.PRECISIONS)}")
    extra = [p for p in prec.PRECISIONS[1:] if p in precisions]
    if "fp8" in extra and fp8_inputs is None:
        raise ConfigError("an fp8 variant needs recorded graph inputs (fp8_inputs): export with disca.build")
    ranges = ranges or ShapeRanges()
    patch = tuple(cfg.dit.patch_size)
    ranges.validate(patch, cfg.dit.in_channels)
    probe = hasattr(dit, "first_block")  # models without it (the diffusers adapters) export no probe graph
    specs = graph_specs(cfg.dit.in_channels, cfg.dit.text_dim, cfg.dit.hidden_size, first=probe)
    dit, predictor = dit.eval(), predictor.eval()
    modules = {"full": FullGraph(dit), "predictor": PredictorGraph(dit, predictor), "head": HeadGraph(dit)}
    if probe:
        modules |= {"first": FirstBlockGraph(dit), "rest": RestGraph(dit), "tail": TailGraph(dit)}
    shapes = export_shapes(ranges)

    with atomic_directory(out, log) as tmp:
        graphs = {}
        for name, spec in specs.items():
            path = tmp / f"{name}.onnx"
            t0 = time.perf_counter()
            log(f"exporting {name} graph (opset {opset})...")
            export_graph(modules[name], spec, ranges, patch, opset, path, verbose)
            export_s = time.perf_counter() - t0
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            tol = prec.TOLERANCES["fp32"]
            parity = _parity(name, session, modules[name], spec, shapes, patch, tol, modules["full"])
            worst = max(p.rel_l2 for p in parity)
            log(f"  {name}: exported in {export_s:.1f}s, ORT parity at 2 shapes: max rel L2 {worst:.2e}")
            variant = {"file": path.name, "opset": opset, "precision": "fp32"}
            variant["produced_by"] = "torch.onnx.export(dynamo=True)"
            graphs[name] = {"spec": spec.to_dict(), "variants": {"fp32": variant}}
            variant["validation"] = _validation(tol, shapes, parity)
            if name in FP32_ONLY:  # stored once: check the graph still gives the same outputs from the shared file
                share_weights_with_full(tmp, name)
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                parity = _parity(name, session, modules[name], spec, shapes, patch, tol, modules["full"])
                variant["validation"] = _validation(tol, shapes, parity)

        calib = None
        if "fp8" in extra:
            log("recording FP8 calibration inputs from real sampling runs...")
            calib = fp8_inputs()
        for name, spec in specs.items():
            if name in FP32_ONLY:
                continue
            src = tmp / f"{name}.onnx"
            fp16 = prec.to_fp16(onnx.load(str(src))) if extra else None
            for p in extra:
                if p == "fp16":
                    model, how = fp16, "onnxruntime.transformers.float16 (norms, softmax, timestep embedders in fp32)"
                else:
                    # head: the predictor's inputs; the probe: the full graph's
                    recorded = calib[{"head": "predictor", "first": "full"}.get(name, name)]
                    amax = prec.activation_amax(src, recorded)
                    model = prec.to_fp8(fp16, amax)
                    how = (
                        f"FP8 E4M3 Q/DQ on {len(amax)} block Linear layers, per-tensor max calibration over "
                        f"{len(recorded)} recorded sampling inputs; the rest fp16"
                    )
                path = tmp / f"{name}.{p}.onnx"
                prec.save_model(model, path)
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                tol = prec.TOLERANCES[p]
                parity = _parity(name, session, modules[name], spec, shapes, patch, tol, modules["full"])
                log(
                    f"  {name} {p}: max rel L2 {max(q.rel_l2 for q in parity):.2e}, "
                    f"min cosine {min(q.cosine for q in parity):.5f}"
                )
                variant = {"file": path.name, "opset": opset, "precision": p, "produced_by": how}
                variant["validation"] = _validation(tol, shapes, parity)
                graphs[name]["variants"][p] = variant
        if include_weights:
            save_checkpoint(tmp / "weights", cfg, dit, predictor, text=text)
        if text is not None:
            np.save(tmp / TEXT_TABLE, text.table.weight.detach().cpu().numpy().astype(np.float32))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": cfg.to_dict(),
            "params": {"dit": num_params(dit), "predictor": num_params(predictor)},
            "weights": {"source": weights_note, "dir": "weights" if include_weights else None},
            "ranges": ranges.to_dict(),
            "graphs": graphs,
            "schedule": schedule.to_dict(),
            "text": {"vocab": cfg.vocab, "file": TEXT_TABLE} if text is not None else None,
            "files": {f: file_entry(tmp, f) for f in files},
            "versions": {
                "disca": disca.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
        }
        write_manifest(tmp, manifest)
        if finish is not None:
            finish(tmp, manifest)
            write_manifest(tmp, manifest)
    return Path(out)


def write_manifest(root: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, default=json_default)
    schema.validate(json.loads(text), f"the exported {MANIFEST}")  # what we write, others must be able to open
    (root / MANIFEST).write_text(text)
