"""Parity of an exported graph against the PyTorch reference, on ONNX Runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from disca.errors import ParityError


@dataclass
class Parity:
    graph: str
    output: str
    shape: tuple
    max_abs: float
    rel_l2: float
    cosine: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(graph: str, output: str, got: np.ndarray, ref: np.ndarray) -> Parity:
    if got.shape != ref.shape:
        raise ParityError(f"{graph} graph: output {output} has shape {got.shape}, PyTorch gives {ref.shape}")
    got64, ref64 = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    diff = got64 - ref64
    ref_norm = np.linalg.norm(ref64)
    denom = ref_norm * np.linalg.norm(got64)
    return Parity(
        graph,
        output,
        tuple(ref.shape),
        float(np.abs(diff).max()) if diff.size else 0.0,
        float(np.linalg.norm(diff) / max(ref_norm, 1e-30)),
        float(got64 @ ref64 / denom) if denom > 0 else float(np.array_equal(got64, ref64)),
    )


def check_graph(graph: str, session, module, feeds: dict[str, np.ndarray], output_names, tolerance: dict):
    """Run `session` (ONNX Runtime) and `module` (torch) on `feeds`; raise ParityError past the tolerance.

    `tolerance`: {"rel_l2": max relative L2, "cosine": min cosine similarity}, either or both, per output.
    """
    import torch

    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in feeds.values()))
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = session.run(list(output_names), feeds)
    results = []
    for name, g, r in zip(output_names, got, ref):
        p = compare(graph, name, g, r.numpy())
        bad = not (np.isfinite(p.rel_l2) and np.isfinite(p.cosine))
        bad = bad or p.rel_l2 > tolerance.get("rel_l2", np.inf) or p.cosine < tolerance.get("cosine", -np.inf)
        if bad:
            limits = ", ".join(f"{k} {v:g}" for k, v in tolerance.items())
            raise ParityError(
                f"{graph} graph: output {name} at shape {p.shape} has relative L2 error {p.rel_l2:.3g} and "
                f"cosine {p.cosine:.6f} against PyTorch (tolerance: {limits}; max abs {p.max_abs:.3g})"
            )
        results.append(p)
    return results
