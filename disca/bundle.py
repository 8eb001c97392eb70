"""The deploy artifact: a directory with `manifest.json`, the ONNX graphs and their
external-data files (and optionally the PyTorch weights for the torch backend).

A bundle is untrusted input. Opening one checks the manifest against its declared schema
(`disca.manifest`), that every path it names stays inside the bundle (no absolute paths,
no `..`, no symlink leading out) and is listed in `files`, and that every listed file is
present with its recorded size; full sha256 verification is opt-in (`verify=True`), so a
multi-GB model does not pay for hashing at every start.

Commands that change a bundle write new files under new names, then switch with one
atomic, fsync'd replace of the manifest (`Bundle.commit`), then remove what the old
manifest listed and the new one does not: a kill at any moment leaves the old bundle or
the new one, both complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from disca import manifest as schema
from disca._atomic import atomic_file, fsync_dir, pid_alive, remove_stale, sigterm_as_exit
from disca.errors import BundleError
from disca.manifest import FORMAT, SCHEMA_VERSION, check_relative_path
from disca.spec import GraphSpec, ShapeRanges

__all__ = ["FORMAT", "MANIFEST", "SCHEMA_VERSION", "Bundle", "Schedule", "file_entry", "sha256"]

MANIFEST = "manifest.json"
STAGE_PREFIX = ".disca-stage-"  # + pid: new files of a change in progress
FRESH = re.compile(r"\.r[0-9a-f]{8}\.")  # the mark of a file written under a fresh name (see `fresh_name`)
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


def fresh_name(stem: str, suffix: str) -> str:
    """`full.fp8` + `.onnx` -> `full.fp8.r1a2b3c4d.onnx`: a new file never replaces one the manifest lists."""
    return f"{stem}.r{secrets.token_hex(4)}{suffix}"


def external_data(graph: Path) -> list[str]:
    """The external-data files an ONNX graph reads, relative to its directory.

    Read from the graph itself where the `onnx` package is installed; otherwise the exporter's
    convention (`<file>.data`). ONNX Runtime refuses locations outside the graph's directory itself.
    """
    try:
        import onnx
    except ImportError:
        return [graph.name + ".data"] if graph.with_name(graph.name + ".data").exists() else []
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as e:  # protobuf's own errors for a file that is not an ONNX graph
        raise BundleError(f"{graph} is not a readable ONNX graph: {str(e).splitlines()[0] if str(e) else e}") from None
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations |= {e.value for e in tensor.external_data if e.key == "location"}
    return sorted(locations)


def is_bundle(path) -> bool:
    """Whether `path` is a directory with a disca manifest (well-formed or not): what --overwrite may replace."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return (
        Path(path).is_dir()
        and not Path(path).is_symlink()
        and isinstance(manifest, dict)
        and (manifest.get("format") == FORMAT)
    )


def refuse_non_bundle(path) -> None:
    """Raise unless `path` is free, an empty directory or a disca bundle: replacing must never delete anything else."""
    path = Path(path)
    real = path.resolve()  # an output path as given: `--out demo` is a new ./demo, not the shipped demo
    if real == SHIPPED_DEMO or SHIPPED_DEMO in real.parents:
        raise BundleError(
            f"the shipped demo bundle is part of the package and is not modified: write to another --out than {path}"
        )
    empty_dir = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if (path.exists() or path.is_symlink()) and not empty_dir and not is_bundle(path):
        raise BundleError(f"{path} exists and is not a disca bundle: refusing to replace it (choose another --out)")


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
        if not isinstance(path, str | os.PathLike):
            raise BundleError(f"a bundle path must be a str or a path, got {type(path).__name__}")
        path = resolve_bundle(path)
        if path.exists() and not path.is_dir():
            raise BundleError(f"bundle {path} is a file; a bundle is the directory holding manifest.json")
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist (create one with `disca-export onnx`)")
        mfile = path / MANIFEST
        if not mfile.is_file():
            raise BundleError(f"{path} is not a disca bundle: {MANIFEST} is missing")
        if mfile.is_symlink():  # the manifest says what every other path means: it must be the bundle's own
            raise BundleError(f"bundle {path}: {MANIFEST} is a symlink; copy the file into the bundle instead")
        try:
            manifest = json.loads(mfile.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise BundleError(f"{mfile} is unreadable or corrupt: {e}") from None
        schema.validate(manifest, str(mfile))
        bundle = cls(path, manifest)
        try:
            bundle.check_paths()
            bundle.check_files(verify=verify)
        except OSError as e:  # e.g. a listed name too long for the file system, an unreadable file
            raise BundleError(f"cannot read bundle {path}: {e}") from None
        try:
            bundle.specs, bundle.ranges  # noqa: B018 - parse now so a bad manifest fails at open
        except (KeyError, TypeError, ValueError) as e:  # the schema should have caught it: still one clean error
            raise BundleError(f"{mfile} is incomplete or malformed ({type(e).__name__}: {e})") from None
        return bundle

    def resolve(self, rel: str, key: str) -> Path:
        """The path of a file the manifest names at `key`, which must stay inside the bundle."""
        try:
            check_relative_path(rel)
        except (ValueError, TypeError) as e:
            raise BundleError(f"bundle {self.path}: {MANIFEST} key {key}: {e}, got {rel!r}") from None
        p = self.path / rel
        try:
            root, real = self.path.resolve(), p.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
            raise BundleError(f"bundle {self.path}: {MANIFEST} key {key}: cannot resolve {rel!r}: {e}") from None
        if real != root and root not in real.parents:
            raise BundleError(f"bundle {self.path}: {MANIFEST} key {key}: {rel!r} leads outside the bundle (a symlink)")
        return p

    def named_paths(self) -> dict[str, str]:
        """{manifest key: relative path} of every file the manifest names outside `files`."""
        out = {}
        for name, g in self.manifest["graphs"].items():
            for p, v in g["variants"].items():
                out[f"graphs.{name}.variants.{p}.file"] = v["file"]
        if self.manifest.get("text"):
            out["text.file"] = self.manifest["text"]["file"]
        for key, e in (self.manifest.get("engines") or {}).items():
            out[f"engines.{key}.file"] = e["file"]
        return out

    def check_paths(self) -> None:
        """Every path inside the bundle, and every file a run may read listed in `files` (so `verify` hashes it)."""
        files = self.manifest["files"]
        for rel in files:
            self.resolve(rel, f"files.{rel}")
        for key, rel in self.named_paths().items():
            self.resolve(rel, key)
            if rel not in files:
                raise BundleError(f"bundle {self.path}: {MANIFEST} key {key}: {rel!r} is not listed in files")
        weights = self.manifest["weights"].get("dir")
        if weights:
            root = self.resolve(weights, "weights.dir")
            for dirpath, _, names in os.walk(root):
                for n in names:
                    rel = (Path(dirpath) / n).relative_to(self.path).as_posix()
                    self.resolve(rel, "weights.dir")
                    if rel not in files:
                        raise BundleError(
                            f"bundle {self.path}: {MANIFEST} key weights.dir: {rel!r} is not listed in files"
                        )

    def check_files(self, verify: bool = False) -> None:
        """Every listed file present with its recorded size; with verify, its sha256 too, and every file a run
        reads listed (the graphs' external data included)."""
        for rel, entry in self.manifest["files"].items():
            p = self.resolve(rel, f"files.{rel}")
            if not p.is_file():
                raise BundleError(f"bundle file {p} is missing")
            size = p.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(
                    f"bundle file {p} has {size} bytes, the manifest says {entry['bytes']}: it is corrupt"
                )
        if verify:
            for key, rel in self.named_paths().items():
                if key.startswith("graphs."):
                    graph = self.resolve(rel, key)
                    for data in external_data(graph):
                        ext = (PurePosixPath(rel).parent / data).as_posix()
                        self.resolve(ext, f"{key} (its external data)")
                        if ext not in self.manifest["files"]:
                            raise BundleError(
                                f"bundle {self.path}: {MANIFEST} key {key}: its external data {ext!r} is not "
                                "listed in files"
                            )
            for rel, ok in self.verify_hashes().items():
                if not ok:
                    raise BundleError(
                        f"bundle file {self.path / rel} does not match its sha256 in the manifest: it is corrupt"
                    )

    def verify_hashes(self) -> dict[str, bool]:
        """{file: sha256 matches the manifest} for every listed file (reads them all)."""
        return {
            rel: sha256(self.resolve(rel, f"files.{rel}")) == e["sha256"] for rel, e in self.manifest["files"].items()
        }

    # ------------------------------------------------------------ changing

    @contextlib.contextmanager
    def staging(self, log=lambda msg: None):
        """A directory inside the bundle for a change's new files; removed afterwards (also on SIGTERM)."""
        for name in self.clean_stale():
            log(f"  removed {name}, left in {self.path} by a killed run")
        with sigterm_as_exit():
            stage = self.path / f"{STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            stage.mkdir()
            try:
                yield stage
            finally:
                shutil.rmtree(stage, ignore_errors=True)

    def commit(self, manifest: dict | None = None, stage: Path | None = None) -> None:
        """Switch the bundle to `manifest` (default: `self.manifest`): move the staged new files in (fresh
        names, nothing listed is touched), replace manifest.json atomically (fsync'd), then remove the files
        that the old manifest listed and the new one does not."""
        new = self.manifest if manifest is None else manifest
        text = json.dumps(new, indent=2, default=json_default)
        schema.validate(json.loads(text), f"the new {MANIFEST} of {self.path}")  # a writer's bug changes nothing
        with sigterm_as_exit():
            old_files = set(self._on_disk()["files"])
            if stage is not None:
                for p in sorted(stage.rglob("*")):
                    if p.is_file():
                        rel = p.relative_to(stage).as_posix()
                        if rel in old_files or (self.path / rel).exists():
                            raise BundleError(f"bundle {self.path} already has {rel}: new files need new names")
                        with open(p, "rb") as f:  # the data on disk before the manifest names it
                            os.fsync(f.fileno())
                        (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(p, self.path / rel)
                fsync_dir(self.path)
            with atomic_file(self.path / MANIFEST) as tmp:
                tmp.write_text(text)
            self.manifest = new
            for rel in sorted(old_files - set(new["files"])):
                with contextlib.suppress(OSError, BundleError):
                    self.resolve(rel, f"files.{rel}").unlink()

    def _on_disk(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {self.path / MANIFEST}: {e}") from None

    def clean_stale(self) -> list[str]:
        """Remove what killed changes left behind: staging directories of dead processes, and unlisted files
        under fresh names (moved in, but the manifest was never switched). -> what was removed."""
        listed, removed = set(self._on_disk().get("files", {})), [p.name for p in remove_stale(self.path / MANIFEST)]
        for p in self.path.iterdir():
            name = p.name
            if name.startswith(STAGE_PREFIX) and p.is_dir() and not p.is_symlink():
                pid = name[len(STAGE_PREFIX) :].split("-")[0]
                if pid.isdigit() and not pid_alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(name)
        for p in self.path.rglob("*"):
            rel = p.relative_to(self.path).as_posix()
            if FRESH.search(p.name) and p.is_file() and rel not in listed and not rel.startswith(STAGE_PREFIX):
                p.unlink()
                removed.append(rel)
        return removed

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
            target = "a copy of it" if self.path.resolve() == SHIPPED_DEMO else self.path  # the package is not changed
            make = {  # the commands that make a variant
                "fp16": f": re-export it with `disca-export onnx ... --out {target} --precision fp32,fp16`",
                "fp8": f": make it with `disca-export calibrate {target}` (or re-export with --precision fp32,fp8)",
            }.get(precision, "")
            raise BundleError(
                f"bundle {self.path} has no {precision} variant of the {graph} graph "
                f"(it has {', '.join(variants)}){make}"
            )
        return self.resolve(variants[precision]["file"], f"graphs.{graph}.variants.{precision}.file")

    @property
    def weights_dir(self) -> Path | None:
        rel = self.manifest["weights"].get("dir")
        return self.resolve(rel, "weights.dir") if rel else None

    @property
    def text_path(self) -> Path | None:
        text = self.manifest.get("text")
        return self.resolve(text["file"], "text.file") if text else None


def json_default(o):
    """json.dumps' fallback for what writers put in a manifest: numpy scalars, tuples."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
