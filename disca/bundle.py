"""The deploy artifact: a directory with `manifest.json`, the two ONNX graphs and
their external-data files (and optionally the PyTorch weights for the torch backend).

Reading a bundle needs no torch. Opening one checks the schema version, and
that every file the manifest lists is present with its recorded size; full
sha256 verification is opt-in (`verify=True`), so a multi-GB model does not
pay for hashing at every start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from disca.errors import BundleError
from disca.spec import GraphSpec, ShapeRanges

FORMAT = "disca-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DEMO = "demo"  # the name of the demo model shipped in the package, usable wherever a bundle path is
SHIPPED_DEMO = Path(__file__).resolve().parent / "demo"


def shipped_demo() -> Path:
    """The bundle of the trained demo model that ships inside the package."""
    if not (SHIPPED_DEMO / MANIFEST).is_file():
        raise BundleError(f"this install has no demo bundle at {SHIPPED_DEMO}: give a bundle path")
    return SHIPPED_DEMO


def resolve_bundle(path, *, write: bool = False) -> Path:
    """A bundle argument -> its directory. `demo` names the shipped demo model unless a directory
    of that name exists here (a real path always wins). `write`: the caller will modify the bundle,
    which the shipped demo does not allow (it is part of the installed package)."""
    path = Path(path)
    if str(path) == DEMO and not path.exists():
        path = shipped_demo()
    if write and path.resolve() == SHIPPED_DEMO:
        raise BundleError(
            f"the shipped demo bundle is part of the package and is not modified: copy it first "
            f"(cp -r {SHIPPED_DEMO} my-demo) and pass the copy"
        )
    return path


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, rel: str) -> dict:
    p = root / rel
    return {"bytes": p.stat().st_size, "sha256": sha256(p)}


@dataclass
class Schedule:
    """Default sampling schedule stored in the manifest."""

    steps: int
    shift: float
    anchors: list[int]

    def to_dict(self) -> dict:
        return {"steps": self.steps, "shift": self.shift, "anchors": list(self.anchors)}


class Bundle:
    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path, verify: bool = False) -> Bundle:
        path = resolve_bundle(path)
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist (create one with `disca-export onnx`)")
        mfile = path / MANIFEST
        if not mfile.is_file():
            raise BundleError(f"{path} is not a disca bundle: {MANIFEST} is missing")
        try:
            manifest = json.loads(mfile.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{mfile} is unreadable or corrupt: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{mfile} is not a disca bundle manifest")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(
                f"{mfile} has schema version {manifest.get('schema_version')}, this disca reads "
                f"{SCHEMA_VERSION}: re-export the bundle with this version"
            )
        bundle = cls(path, manifest)
        try:
            bundle.check_files(verify=verify)
            bundle.specs, bundle.ranges  # noqa: B018 - parse now so a bad manifest fails at open
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{mfile} is incomplete or malformed ({type(e).__name__}: {e})") from None
        return bundle

    def check_files(self, verify: bool = False) -> None:
        """Every listed file present with its recorded size; with verify, its sha256 too."""
        for rel, entry in self.manifest["files"].items():
            p = self.path / rel
            if not p.is_file():
                raise BundleError(f"bundle file {p} is missing")
            size = p.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(
                    f"bundle file {p} has {size} bytes, the manifest says {entry['bytes']}: it is corrupt"
                )
        if verify:
            for rel, ok in self.verify_hashes().items():
                if not ok:
                    raise BundleError(
                        f"bundle file {self.path / rel} does not match its sha256 in the manifest: it is corrupt"
                    )

    def verify_hashes(self) -> dict[str, bool]:
        """{file: sha256 matches the manifest} for every listed file (reads them all)."""
        return {rel: sha256(self.path / rel) == e["sha256"] for rel, e in self.manifest["files"].items()}

    # ------------------------------------------------------------ contents

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.model["dit"]["patch_size"])

    @property
    def channels(self) -> int:
        return self.model["dit"]["in_channels"]

    @property
    def text_dim(self) -> int:
        return self.model["dit"]["text_dim"]

    @property
    def mean_flow(self) -> bool:
        return self.model["dit"]["mean_flow"]

    @property
    def specs(self) -> dict[str, GraphSpec]:
        return {name: GraphSpec.from_dict(g["spec"]) for name, g in self.manifest["graphs"].items()}

    @property
    def ranges(self) -> ShapeRanges:
        return ShapeRanges.from_dict(self.manifest["ranges"])

    @property
    def schedule(self) -> Schedule:
        s = self.manifest["schedule"]
        return Schedule(int(s["steps"]), float(s["shift"]), [int(a) for a in s["anchors"]])

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        variants = self.manifest["graphs"][graph]["variants"]
        if precision not in variants:
            make = {  # the commands that make a variant
                "fp16": f": re-export it with `disca-export onnx ... --out {self.path} --precision fp32,fp16`",
                "fp8": f": make it with `disca-export calibrate {self.path}` (or re-export with --precision fp32,fp8)",
            }.get(precision, "")
            raise BundleError(
                f"bundle {self.path} has no {precision} variant of the {graph} graph "
                f"(it has {', '.join(variants)}){make}"
            )
        return self.path / variants[precision]["file"]

    @property
    def weights_dir(self) -> Path | None:
        rel = self.manifest.get("weights", {}).get("dir")
        return self.path / rel if rel else None
