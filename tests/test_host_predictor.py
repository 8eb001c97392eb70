"""Predictor training on an adapted diffusers host (tiny random Wan2.1), its checkpoint, and its export.

The host samples its own trajectories from given text embeddings; the predictor checkpoint holds the predictor
and a host record only, and `disca-export onnx --from diffusers:PATH --predictor DIR` turns it into a bundle.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytest.importorskip("diffusers", reason="adapter tests need diffusers (dev extra)")

from disca.cli.export import main as export_cli  # noqa: E402
from disca.cli.train import main as train_cli  # noqa: E402
from disca.errors import CheckpointError, ShapeError  # noqa: E402
from disca.models.adapters import adapt, build_predictor, load_diffusers  # noqa: E402
from disca.models.adapters.predictor_checkpoint import load_predictor_checkpoint  # noqa: E402
from disca.training.loop import TrainArgs  # noqa: E402
from disca.training.predictor import load_text_embeddings, train_host_predictor  # noqa: E402
from tests.test_adapters import WAN, tiny_host  # noqa: E402
from tests.test_cli import error_line, invoke  # noqa: E402

LATENT = (2, 8, 8)  # latent frames, height, width: 2 x 4 x 4 video tokens with Wan's (1, 2, 2) patch
GRID = dict(anchors=[0, 2], steps=4, shift=5.0)
ARGS = dict(batch=4, lr=2e-3, warmup=1, ckpt_every=100, eval_every=0, eval_n=2, ema=0.0)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """A tiny random Wan transformer saved as a diffusers directory, and text embeddings for it (.npy)."""
    root = tmp_path_factory.mktemp("wan")
    tiny_host("wan").save_pretrained(root / "transformer")
    text = np.random.default_rng(0).standard_normal((3, 4, WAN["text_dim"])).astype(np.float32)
    np.save(root / "text.npy", text)
    return root


def test_training_reduces_the_loss_and_resumes(wan_dir, tmp_path):
    adapter, _ = load_diffusers(wan_dir / "transformer")
    text = load_text_embeddings(wan_dir / "text.npy", adapter.text_dim)
    run = dict(source="test", latent=LATENT, depth=1, trajectories=4, **GRID)
    first = train_host_predictor(tmp_path / "p", adapter, text, TrainArgs(steps=1, **ARGS), **run)
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["host"] == {"class": "WanTransformer3DModel", "source": "test", "mean_flow": None}
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.suffix == ".safetensors") == [
        "optimizer.safetensors",
        "predictor.safetensors",  # the host's weights stay in its diffusers directory
    ]
    last = train_host_predictor(tmp_path / "p", adapter, text, TrainArgs(steps=40, **ARGS), **run)
    assert json.loads((tmp_path / "p" / "config.json").read_text())["step"] == 40  # resumed, not restarted
    assert last["feat_error"] < 0.6 * first["feat_error"], (first, last)
    assert last["psnr_disca_vs_full"] > first["psnr_disca_vs_full"] + 3  # DisCa sampling closer to all-full


def test_checkpoint_loads_only_into_its_host(wan_dir, tmp_path):
    adapter, _ = load_diffusers(wan_dir / "transformer")
    text = load_text_embeddings(wan_dir / "text.npy", adapter.text_dim)
    run = dict(source="test", latent=LATENT, depth=1, trajectories=2, **GRID)
    train_host_predictor(tmp_path / "p", adapter, text, TrainArgs(steps=2, **ARGS), **run)
    loaded = load_predictor_checkpoint(tmp_path / "p", adapter)
    fresh = build_predictor(adapter, 1)
    assert not torch.equal(loaded.fusion[0].weight, fresh.fusion[0].weight)

    wider = adapt(tiny_host("wan", attention_head_dim=16))
    with pytest.raises(CheckpointError, match="trained on another WanTransformer3DModel.*hidden_size 24 vs 32"):
        load_predictor_checkpoint(tmp_path / "p", wider)
    with pytest.raises(CheckpointError, match="trained on a WanTransformer3DModel, not on this HunyuanVideo"):
        load_predictor_checkpoint(tmp_path / "p", adapt(tiny_host("hunyuan")))
    with pytest.raises(CheckpointError, match="trained on another"):  # and resuming into another host
        train_host_predictor(tmp_path / "p", wider, torch.zeros(1, 4, 16), TrainArgs(steps=3, **ARGS), **run)

    # a corrupt or mis-shaped EMA file is one CheckpointError, not a SafetensorError or a silent broadcast
    from safetensors.torch import save_file

    ema = tmp_path / "p" / "ema.safetensors"
    ema.write_bytes(b"\xff" * 100)
    with pytest.raises(CheckpointError, match="cannot read .*ema.safetensors"):
        load_predictor_checkpoint(tmp_path / "p", adapter)
    save_file({"predictor.fusion.0.weight": torch.zeros(1)}, str(ema))  # one value would fill the whole weight
    with pytest.raises(CheckpointError, match="predictor.fusion.0.weight has shape \\[1\\], expected"):
        load_predictor_checkpoint(tmp_path / "p", adapter)


def test_text_embedding_errors(wan_dir, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        load_text_embeddings(tmp_path / "nope.npy", 16)
    with pytest.raises(ShapeError, match=r"shape \(3, 4, 16\); the model expects \(N, L, 8\)"):
        load_text_embeddings(wan_dir / "text.npy", 8)
    from safetensors.torch import save_file

    save_file({"prompt_embeds": torch.zeros(4, 16)}, str(tmp_path / "one.safetensors"))
    assert load_text_embeddings(tmp_path / "one.safetensors", 16).shape == (1, 4, 16)
    save_file({"a": torch.zeros(4, 16), "b": torch.zeros(4, 16)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(Exception, match="holds 2 tensors"):
        load_text_embeddings(tmp_path / "two.safetensors", 16)


def test_train_cli_errors_are_one_line(wan_dir, tmp_path):
    source = f"diffusers:{wan_dir / 'transformer'}"
    base = ["predictor", "--from", source, "--out", tmp_path / "p", "--steps", "1"]
    assert "does not exist" in error_line(invoke(train_cli, [*base, "--text-embeddings", tmp_path / "x.npy"]))
    np.save(tmp_path / "wide.npy", np.zeros((1, 4, 32), np.float32))
    line = error_line(invoke(train_cli, [*base, "--text-embeddings", tmp_path / "wide.npy"]))
    assert "(N, L, 16)" in line and "text_dim is 16" in line
    assert "--text-embeddings" in error_line(invoke(train_cli, base))
    both = ["--student", tmp_path, "--text-embeddings", wan_dir / "text.npy"]
    assert "exactly one of --student" in error_line(invoke(train_cli, [*base, *both]))
    line = error_line(invoke(train_cli, [*base, "--text-embeddings", wan_dir / "text.npy", "--latent", "2,7,8"]))
    assert "multiples of the patch" in line
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_cli_trains_exports_and_the_bundle_runs_the_trained_predictor(wan_dir, tmp_path):
    """disca-train predictor --from ... -> disca-export onnx --from ... --predictor DIR -> ORT == torch."""
    pytest.importorskip("onnxruntime")
    from disca.bundle import Bundle
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
    from disca.runtime.backends.torch_backend import TorchBackend

    source = f"diffusers:{wan_dir / 'transformer'}"
    train = ["predictor", "--from", source, "--text-embeddings", wan_dir / "text.npy", "--latent", "2,8,8"]
    train += ["--predictor-depth", "1", "--schedule", "0,2", "--grid-steps", "4", "--trajectories", "2"]
    train += ["--steps", "3", "--batch", "2", "--eval-n", "1", "--ema", "0", "--device", "cpu"]
    result = invoke(train_cli, [*train, "--out", tmp_path / "p"])
    assert result.exit_code == 0, result.output

    ranges = ["--batch", "1:1:2", "--frames", "1:2:4", "--height", "4:8:12", "--width", "4:8:12", "--text-len", "1:4:8"]
    args = ["onnx", "--from", source, "--predictor", tmp_path / "p", "--out", tmp_path / "b", *ranges]
    result = invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(tmp_path / "b", verify=True)
    assert str(tmp_path / "p") in bundle.manifest["weights"]["source"]
    for name in ("full", "predictor"):
        results = bundle.manifest["graphs"][name]["variants"]["fp32"]["validation"]["results"]
        assert max(p["rel_l2"] for p in results) < 1e-4

    # The bundle's predictor graph is the trained predictor (not a fresh one), on ONNX Runtime.
    adapter, fresh = load_diffusers(wan_dir / "transformer", predictor_depth=1)
    trained = load_predictor_checkpoint(tmp_path / "p", adapter)
    g = np.random.default_rng(1)
    latent = g.standard_normal((1, 4, *LATENT)).astype(np.float32)
    t, r = np.array([0.7], np.float32), np.array([0.5], np.float32)
    text = np.load(wan_dir / "text.npy")[:1]
    with OnnxRuntimeBackend(bundle) as ort:
        _, hidden = ort.full(latent, t, r, text)
        got = ort.predict(latent, t, r, text, hidden)
    outs = {}
    for name, predictor in (("trained", trained), ("fresh", fresh)):
        with TorchBackend.from_modules(adapter, predictor) as tb:
            outs[name] = tb.to_numpy(tb.predict(*(tb.asarray(a) for a in (latent, t, r, text, hidden))))
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(got, outs["trained"]) < 1e-4
    assert rel(got, outs["fresh"]) > 1e-2

    assert "--predictor goes with --from" in error_line(
        invoke(export_cli, ["onnx", "--preset", "tiny", "--predictor", tmp_path / "p", "--out", tmp_path / "c"])
    )
