"""diffusers adapters (Wan2.1, HunyuanVideo) and the official DisCa layout, on tiny random configs (no downloads).

Parity reference: the unmodified diffusers module's own forward. Weights are randomised (`randomize_`) so
that every path, including zero-initialised ones, carries signal.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="adapter tests need the torch extra")
diffusers = pytest.importorskip("diffusers", reason="adapter tests need diffusers (dev extra)")

from disca.errors import CheckpointError, ConfigError  # noqa: E402
from disca.models import randomize_  # noqa: E402
from disca.models.adapters import adapt, build_predictor, load_diffusers, pack_text  # noqa: E402
from disca.models.adapters.official_disca import load_official_disca  # noqa: E402
from disca.models.graphs import FullGraph, PredictorGraph  # noqa: E402

TORCH_TOL = 1e-5  # max |adapter - host| / max |host|: the adapter calls the same submodules in the same order
TEXT_LEN = 5
GUIDANCE = 6.0

WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
HUNYUAN = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=8,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=2,
    patch_size_t=1,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(2, 2, 4),
)


def tiny_host(arch: str, seed: int = 0, **overrides):
    cls = diffusers.WanTransformer3DModel if arch == "wan" else diffusers.HunyuanVideoTransformer3DModel
    return randomize_(cls(**{**(WAN if arch == "wan" else HUNYUAN), **overrides}), seed).eval()


def inputs(arch: str, batch: int = 2, seed: int = 0):
    """(latent, t, r, graph text, host kwargs) for one call; t, r in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, 4, 2, 8, 8, generator=g)
    t = torch.rand(batch, generator=g) * 0.9 + 0.05
    r = t * torch.rand(batch, generator=g)
    if arch == "wan":
        text = torch.randn(batch, TEXT_LEN, WAN["text_dim"], generator=g)
        return latent, t, r, text, dict(encoder_hidden_states=text)
    prompt = torch.randn(batch, TEXT_LEN, HUNYUAN["text_embed_dim"], generator=g)
    pooled = torch.randn(batch, HUNYUAN["pooled_projection_dim"], generator=g)
    host = dict(
        encoder_hidden_states=prompt,
        encoder_attention_mask=torch.ones(batch, TEXT_LEN, dtype=torch.long),
        pooled_projections=pooled,
        guidance=torch.full((batch,), GUIDANCE * 1000.0),
    )
    return latent, t, r, pack_text(prompt, pooled), host


def host_forward(host, latent, t, kwargs):
    with torch.no_grad():
        return host(latent, timestep=t * 1000.0, return_dict=False, **kwargs)[0]


def rel_max(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module", params=["wan", "hunyuan"])
def adapted(request):
    """(arch, host, adapter with a randomised mean-flow r embedder, predictor)."""
    arch = request.param
    host = tiny_host(arch)
    adapter = adapt(host, mean_flow="sum")
    randomize_(adapter.r_embedder, 3)
    predictor = randomize_(build_predictor(adapter, depth=1), 2).eval()
    return arch, host, adapter.eval(), predictor


# ---------------------------------------------------------------- torch parity


@pytest.mark.parametrize("arch", ["wan", "hunyuan"])
def test_full_graph_reproduces_host_forward(arch):
    host = tiny_host(arch)
    latent, t, r, text, kwargs = inputs(arch)
    ref = host_forward(host, latent, t, kwargs)
    with torch.no_grad():
        velocity, hidden = FullGraph(adapt(host).eval())(latent, t, r, text)
    assert velocity.shape == latent.shape
    assert hidden.shape == (2, 2 * 4 * 4 + TEXT_LEN, host.config.num_attention_heads * host.config.attention_head_dim)
    assert rel_max(velocity, ref) <= TORCH_TOL


@pytest.mark.parametrize("arch", ["wan", "hunyuan"])
def test_r_embedder_is_zero_at_init(arch):
    """mean_flow="sum": the adapted model is the host until the r embedder trains; "mean" halves emb_t."""
    host = tiny_host(arch)
    latent, t, r, text, kwargs = inputs(arch)
    ref = host_forward(host, latent, t, kwargs)
    with torch.no_grad():
        summed = adapt(host, mean_flow="sum")(latent, t, r, text)
        mean = adapt(host, mean_flow="mean")(latent, t, r, text)
    assert rel_max(summed, ref) <= TORCH_TOL
    assert rel_max(mean, ref) > 1e-3


def test_r_conditioning_reaches_the_output(adapted):
    _, _, adapter, _ = adapted
    latent, t, r, text, _ = inputs(adapted[0])
    with torch.no_grad():
        a, b = adapter(latent, t, r, text), adapter(latent, t, torch.zeros_like(r), text)
    assert rel_max(a, b) > 1e-3


def test_predictor_graph_runs_from_a_real_cache(adapted):
    arch, _, adapter, predictor = adapted
    latent, t, r, text, _ = inputs(arch)
    with torch.no_grad():
        _, hidden = FullGraph(adapter)(latent, t, r, text)
        velocity = PredictorGraph(adapter, predictor)(latent, t * 0.8, r * 0.8, text, hidden)
    assert velocity.shape == latent.shape and torch.isfinite(velocity).all()
    host_params = sum(p.numel() for p in adapter.model.parameters())
    assert sum(p.numel() for p in predictor.parameters()) < host_params


def test_wan_hidden_carries_the_unchanged_text_context():
    host = tiny_host("wan")
    adapter = adapt(host).eval()
    latent, t, r, text, _ = inputs("wan")
    with torch.no_grad():
        tokens, vec, rope = adapter.embed(latent, t, r, text)
        hidden = adapter.trunk(tokens, vec, rope)
    assert torch.equal(hidden[:, -TEXT_LEN:], host.condition_embedder.text_embedder(text))


def test_hunyuan_trimmed_prompt_equals_masked_host():
    """No mask input: a prompt trimmed to its real length gives what the host gives for the padded, masked one."""
    host = tiny_host("hunyuan")
    latent, t, r, text, kwargs = inputs("hunyuan", batch=1)
    real = 3
    kwargs["encoder_attention_mask"][:, real:] = 0
    ref = host_forward(host, latent, t, kwargs)
    with torch.no_grad():
        got = adapt(host)(latent, t, r, text[:, :real])
    assert rel_max(got, ref) <= TORCH_TOL


# ---------------------------------------------------------------- ONNX export + ONNX Runtime parity


@pytest.mark.slow
@pytest.mark.parametrize("opset", [23, 20])
def test_export_bundle_parity_on_onnx_runtime(adapted, opset, tmp_path, tiny_ranges):
    pytest.importorskip("onnxruntime")
    from disca.build import build_bundle

    arch, host, adapter, predictor = adapted
    out = build_bundle(
        adapter.model_config(predictor_depth=1),
        adapter,
        predictor,
        tmp_path / "bundle",
        opset=opset,
        ranges=tiny_ranges,
        include_weights=False,
        weights_note=f"diffusers:{type(host).__name__} (tiny, random)",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("full", "predictor"):
        results = manifest["graphs"][name]["variants"]["fp32"]["validation"]["results"]
        assert len(results) >= 2  # two shapes: the axes really are dynamic
        assert max(p["rel_l2"] for p in results) < 1e-4

    # The runtime's own DisCa sampler (anchors + cached steps) on the bundle vs on the torch modules.
    from disca.bundle import Bundle
    from disca.runtime.backends.onnxrt import OnnxRuntimeBackend
    from disca.runtime.backends.torch_backend import TorchBackend
    from disca.runtime.sampler import denoise
    from disca.runtime.schedule import DiscaPolicy

    latent, _, _, text, _ = inputs(arch, batch=1)
    runs = []
    for backend in (OnnxRuntimeBackend(Bundle.open(out)), TorchBackend.from_modules(adapter, predictor)):
        with backend:
            final, _ = denoise(backend, latent.numpy(), text.numpy(), steps=6, shift=5.0, policy=DiscaPolicy([0, 1, 3]))
        runs.append(torch.from_numpy(final))
    assert torch.isfinite(runs[0]).all()
    assert torch.linalg.norm(runs[0] - runs[1]) / torch.linalg.norm(runs[1]) < 1e-4


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("arch", ["wan", "hunyuan"])
def test_load_diffusers_from_a_local_directory(arch, tmp_path):
    host = tiny_host(arch)
    host.save_pretrained(tmp_path / "transformer")
    adapter, predictor = load_diffusers(tmp_path / "transformer", predictor_depth=1)
    latent, t, r, text, kwargs = inputs(arch)
    with torch.no_grad():
        got = adapter(latent, t, r, text)
    assert torch.equal(got, host_forward(host, latent, t, kwargs))
    assert len(predictor.blocks) == 1


def test_load_diffusers_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_diffusers(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ConfigError, match="unsupported model class 'UNet2DConditionModel'"):
        load_diffusers(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match="cannot load WanTransformer3DModel"):
        load_diffusers(tmp_path)  # config but no weights
    for content in (b"[]", json.dumps({"_class_name": ["x"]}).encode(), b"\xff\xfe{"):  # a config of the wrong kind
        (tmp_path / "config.json").write_bytes(content)
        with pytest.raises((CheckpointError, ConfigError), match="config.json"):
            load_diffusers(tmp_path)
    host = tiny_host("wan")
    host.save_pretrained(tmp_path / "typed")
    config = json.loads((tmp_path / "typed/config.json").read_text())
    for bad, error, message in (
        ("abc", CheckpointError, "cannot load WanTransformer3DModel"),
        (-1, ConfigError, "no transformer blocks"),
    ):
        (tmp_path / "typed/config.json").write_text(json.dumps({**config, "num_layers": bad}))
        with pytest.raises(error, match=message):  # not diffusers' TypeError, nor an IndexError in the adapter
            load_diffusers(tmp_path / "typed")


def test_unsupported_models_and_configs():
    with pytest.raises(ConfigError, match="unsupported model class 'Linear'"):
        adapt(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="image conditioning"):
        adapt(tiny_host("wan", image_dim=8, added_kv_proj_dim=8))
    with pytest.raises(ConfigError, match="image_condition_type='token_replace'"):
        adapt(tiny_host("hunyuan", image_condition_type="token_replace"))
    with pytest.raises(ConfigError, match="mean_flow"):
        adapt(tiny_host("wan"), mean_flow="avg")


# ---------------------------------------------------------------- official DisCa layout

H, HEAD, MLP, FREQ = 16, 8, 64, 256


def official_dit_shapes() -> dict:
    """The tiny HunyuanVideo-1.0 + DisCa DiT in the original (Tencent) key layout, written out by hand."""
    s = {"img_in.proj.weight": (H, 4, 1, 2, 2), "img_in.proj.bias": (H,)}

    def lin(name, out, inp):
        s[f"{name}.weight"], s[f"{name}.bias"] = (out, inp), (out,)

    def norm(name, dim, bias=False):
        s[f"{name}.weight"] = (dim,)
        if bias:
            s[f"{name}.bias"] = (dim,)

    lin("txt_in.input_embedder", H, 16)
    lin("txt_in.t_embedder.mlp.0", H, FREQ)
    lin("txt_in.t_embedder.mlp.2", H, H)
    lin("txt_in.c_embedder.linear_1", H, 16)
    lin("txt_in.c_embedder.linear_2", H, H)
    rb = "txt_in.individual_token_refiner.blocks.0"
    norm(f"{rb}.norm1", H, bias=True)
    lin(f"{rb}.self_attn_qkv", 3 * H, H)
    lin(f"{rb}.self_attn_proj", H, H)
    norm(f"{rb}.norm2", H, bias=True)
    lin(f"{rb}.mlp.fc1", MLP, H)
    lin(f"{rb}.mlp.fc2", H, MLP)
    lin(f"{rb}.adaLN_modulation.1", 2 * H, H)
    for emb in ("time_in", "time_r_in", "guidance_in"):
        lin(f"{emb}.mlp.0", H, FREQ)
        lin(f"{emb}.mlp.2", H, H)
    lin("vector_in.in_layer", H, 8)
    lin("vector_in.out_layer", H, H)
    for stream in ("img", "txt"):
        lin(f"double_blocks.0.{stream}_mod.linear", 6 * H, H)
        lin(f"double_blocks.0.{stream}_attn_qkv", 3 * H, H)
        norm(f"double_blocks.0.{stream}_attn_q_norm", HEAD)
        norm(f"double_blocks.0.{stream}_attn_k_norm", HEAD)
        lin(f"double_blocks.0.{stream}_attn_proj", H, H)
        lin(f"double_blocks.0.{stream}_mlp.fc1", MLP, H)
        lin(f"double_blocks.0.{stream}_mlp.fc2", H, MLP)
    s.update(official_single_block_shapes("single_blocks.0"))
    lin("final_layer.linear", 16, H)
    lin("final_layer.adaLN_modulation.1", 2 * H, H)
    return s


def official_single_block_shapes(prefix: str) -> dict:
    return {
        f"{prefix}.linear1.weight": (3 * H + MLP, H),
        f"{prefix}.linear1.bias": (3 * H + MLP,),
        f"{prefix}.linear2.weight": (H, H + MLP),
        f"{prefix}.linear2.bias": (H,),
        f"{prefix}.q_norm.weight": (HEAD,),
        f"{prefix}.k_norm.weight": (HEAD,),
        f"{prefix}.modulation.linear.weight": (3 * H, H),
        f"{prefix}.modulation.linear.bias": (3 * H,),
    }


def official_predictor_shapes() -> dict:
    s = {"fusion_mlp.0.weight": (H, 2 * H), "fusion_mlp.0.bias": (H,)}
    s |= {"fusion_mlp.2.weight": (H, H), "fusion_mlp.2.bias": (H,)}
    return s | official_single_block_shapes("mm_single_blocks.0")


def random_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in shapes.items()}


@pytest.fixture
def official_files(tmp_path):
    from safetensors.torch import save_file

    dit, pred = random_state(official_dit_shapes(), 0), random_state(official_predictor_shapes(), 1)
    save_file(dit, str(tmp_path / "dit.safetensors"))
    save_file(pred, str(tmp_path / "predictor.safetensors"))
    return tmp_path / "dit.safetensors", tmp_path / "predictor.safetensors", dit, pred


def test_official_layout_loads_and_matches_diffusers_converter(official_files):
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers

    dit_path, pred_path, dit, pred = official_files
    adapter = adapt(tiny_host("hunyuan", seed=5), mean_flow="mean")
    predictor = build_predictor(adapter, depth=1)
    load_official_disca(adapter, predictor, dit=dit_path, predictor_weights=pred_path)

    # Independent reference: diffusers' own converter (its single-block split hard-codes hidden 3072, so the
    # single blocks and the DisCa-only keys are checked by hand below).
    theirs = {k: v.clone() for k, v in dit.items() if not k.startswith(("single_blocks.", "time_r_in."))}
    theirs = convert_hunyuan_video_transformer_to_diffusers(theirs)
    ours = adapter.model.state_dict()
    assert theirs and all(torch.equal(ours[k], v) for k, v in theirs.items())

    def split(t):
        return torch.split(t, [H, H, H, MLP])

    for module, prefix, state in (
        (adapter.model.single_transformer_blocks[0], "single_blocks.0", dit),
        (predictor.blocks[0], "mm_single_blocks.0", pred),
    ):
        q, k, v, mlp = split(state[f"{prefix}.linear1.weight"])
        assert torch.equal(module.attn.to_q.weight, q) and torch.equal(module.attn.to_k.weight, k)
        assert torch.equal(module.attn.to_v.weight, v) and torch.equal(module.proj_mlp.weight, mlp)
        assert torch.equal(module.proj_mlp.bias, split(state[f"{prefix}.linear1.bias"])[3])
        assert torch.equal(module.proj_out.weight, state[f"{prefix}.linear2.weight"])
        assert torch.equal(module.attn.norm_q.weight, state[f"{prefix}.q_norm.weight"])
        assert torch.equal(module.norm.linear.weight, state[f"{prefix}.modulation.linear.weight"])
    assert torch.equal(adapter.r_embedder.linear_2.weight, dit["time_r_in.mlp.2.weight"])
    assert torch.equal(predictor.fusion[0].weight, pred["fusion_mlp.0.weight"])
    assert torch.equal(predictor.fusion[2].bias, pred["fusion_mlp.2.bias"])

    latent, t, r, text, _ = inputs("hunyuan")
    with torch.no_grad():
        _, hidden = FullGraph(adapter.eval())(latent, t, r, text)
        velocity = PredictorGraph(adapter, predictor.eval())(latent, t, r, text, hidden)
    assert torch.isfinite(velocity).all()


def test_official_layout_errors_name_the_keys(official_files):
    _, _, dit, pred = official_files
    adapter = adapt(tiny_host("hunyuan"), mean_flow="mean")
    predictor = build_predictor(adapter, depth=1)

    missing = {k: v for k, v in dit.items() if k != "double_blocks.0.txt_attn_proj.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1 keys: model\.transformer_blocks\.0\.attn\.to_add_out"):
        load_official_disca(adapter, dit=missing)
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys: double_blocks\.0\.img_lora\.weight"):
        load_official_disca(adapter, dit={**dit, "double_blocks.0.img_lora.weight": torch.zeros(1)})
    bad = {**pred, "fusion_mlp.0.weight": torch.zeros(H, 3 * H)}
    with pytest.raises(CheckpointError, match=r"fusion_mlp\.0\.weight -> fusion\.0\.weight: \(16, 48\) vs \(16, 32\)"):
        load_official_disca(adapter, predictor, predictor_weights=bad)
    with pytest.raises(CheckpointError, match="mean_flow='mean'"):
        load_official_disca(adapt(tiny_host("hunyuan")), dit=dit)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_disca(adapter, dit="/nonexistent/dit.safetensors")
    with pytest.raises(ConfigError, match="HunyuanVideo"):
        load_official_disca(adapt(tiny_host("wan")), dit=dit)


@pytest.mark.slow
def test_export_cli_from_a_diffusers_directory(tmp_path):
    """`disca-export onnx --from diffusers:PATH` writes a validated bundle (here: a tiny Wan)."""
    from disca.bundle import Bundle
    from disca.cli.export import main as export_cli
    from tests.test_cli import error_line, invoke

    tiny_host("wan").save_pretrained(tmp_path / "transformer")
    ranges = ["--batch", "1:1:2", "--frames", "1:2:4", "--height", "4:8:12", "--width", "4:8:12", "--text-len", "1:4:8"]
    source = f"diffusers:{tmp_path / 'transformer'}"
    args = ["onnx", "--from", source, "--predictor-depth", "1", "--out", tmp_path / "b", *ranges]
    result = invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    b = Bundle.open(tmp_path / "b", verify=True)
    assert b.weights_dir is None and "WanTransformer3DModel" in b.manifest["weights"]["source"]
    assert "expected diffusers:PATH" in error_line(
        invoke(export_cli, ["onnx", "--from", "hf:x", "--out", tmp_path / "c"])
    )


def tensor_parallel(state: dict) -> dict:
    """The release's other spelling (read in its hyvideo/inference.py loader): fused projections stored split."""
    out = {}
    for key, value in state.items():
        head, _, tail = key.rpartition(".")  # tail: weight / bias
        if head.endswith(("img_attn_qkv", "txt_attn_qkv")):
            for part, name in zip(value.chunk(3), "qkv"):
                out[f"{head[: -len('qkv')]}{name}.{tail}"] = part
        elif head.endswith(".linear1"):
            for part, name in zip(torch.split(value, [H, H, H, MLP]), ("q", "k", "v", "mlp")):
                out[f"{head}_{name}.{tail}"] = part
        elif head.endswith(".linear2"):
            out[f"{head}.fc.{tail}"] = value
        else:
            out[key] = value
    return out


def test_official_layout_variants_load_the_same_weights(official_files):
    """Split (tensor-parallel) projections and wrapper prefixes on the predictor: as the official loaders accept."""
    _, _, dit, pred = official_files
    loaded = []
    for dit_state, pred_state in (
        (dit, pred),
        (tensor_parallel(dit), {f"module.predictor.{k}": v for k, v in tensor_parallel(pred).items()}),
        (dit, {f"predictor.{k}": v for k, v in pred.items()}),
    ):
        adapter = adapt(tiny_host("hunyuan"), mean_flow="mean")
        predictor = build_predictor(adapter, depth=1)
        load_official_disca(adapter, predictor, dit=dit_state, predictor_weights=pred_state)
        loaded.append({**adapter.state_dict(), **{f"p.{k}": v for k, v in predictor.state_dict().items()}})
    assert tensor_parallel(dit).keys() != dit.keys()  # the variant really is another spelling
    for other in loaded[1:]:
        assert other.keys() == loaded[0].keys()
        assert all(torch.equal(other[k], loaded[0][k]) for k in other)
    adapter = adapt(tiny_host("hunyuan"), mean_flow="mean")
    with pytest.raises(CheckpointError, match=r"unexpected 2 keys: fusion_mlp\.fc1\.bias"):  # not in the release
        renamed = {k.replace("fusion_mlp.0.", "fusion_mlp.fc1."): v for k, v in pred.items()}
        load_official_disca(adapter, build_predictor(adapter, depth=1), predictor_weights=renamed)
