import pytest
import torch

from disca.errors import CheckpointError, ConfigError
from disca.models import (
    PRESETS,
    CachePredictor,
    DiTConfig,
    ModelConfig,
    VideoDiT,
    build,
    load_checkpoint,
    num_params,
    preset,
    randomize_,
    save_checkpoint,
)
from disca.models.graphs import FullGraph, PredictorGraph


def _inputs(cfg, b=2, f=2, h=8, w=12, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, cfg.dit.in_channels, f, h, w, generator=g),
        torch.rand(b, generator=g),
        torch.rand(b, generator=g) * 0.5,
        torch.randn(b, L, cfg.dit.text_dim, generator=g),
    )


def test_stages_compose_to_forward_with_expected_shapes(tiny_model):
    cfg, dit, _ = tiny_model
    latent, t, r, text = _inputs(cfg)
    tokens, vec, rope = dit.embed(latent, t, r, text)
    n = 2 * (8 // 2) * (12 // 2) + 3
    assert tokens.shape == (2, n, cfg.dit.hidden_size)
    assert vec.shape == (2, cfg.dit.hidden_size)
    assert rope[0].shape == (n, cfg.dit.head_dim // 2)
    hidden = dit.trunk(tokens, vec, rope)
    velocity = dit.head(hidden, vec, latent, t)
    assert velocity.shape == latent.shape
    torch.testing.assert_close(velocity, dit(latent, t, r, text))


def test_untrained_model_is_adaln_zero():
    cfg = preset("tiny")
    dit, predictor = build(cfg)
    latent, t, r, text = _inputs(cfg)
    assert torch.count_nonzero(dit(latent, t, r, text)) == 0  # zero output layer
    tokens, vec, rope = dit.embed(latent, t, r, text)
    torch.testing.assert_close(dit.trunk(tokens, vec, rope), tokens)  # every block starts as the identity


def test_r_conditions_mean_flow_model_only(tiny_model):
    cfg, dit, _ = tiny_model
    latent, t, r, text = _inputs(cfg)
    assert not torch.allclose(dit(latent, t, r, text), dit(latent, t, r * 0, text))
    teacher_cfg = preset("tiny")
    teacher_cfg.dit.mean_flow = False
    teacher = randomize_(VideoDiT(teacher_cfg.dit))
    assert teacher.r_embedder is None
    torch.testing.assert_close(teacher(latent, t, r, text), teacher(latent, t, r * 0, text))


def test_rope_makes_video_tokens_position_aware(tiny_model):
    cfg, dit, _ = tiny_model
    latent, t, r, text = _inputs(cfg, b=1)
    tokens, vec, rope = dit.embed(latent, t, r, text)
    cos, sin = rope
    nv = tokens.shape[1] - text.shape[1]
    assert torch.all(cos[nv:] == 1) and torch.all(sin[nv:] == 0)  # text tokens are not rotated
    assert len({tuple(row.tolist()) for row in cos[:nv]}) == nv  # every video position is distinct


def test_predictor_graph_uses_cache(tiny_model):
    cfg, dit, predictor = tiny_model
    latent, t, r, text = _inputs(cfg)
    _, hidden = FullGraph(dit)(latent, t, r, text)
    pred = PredictorGraph(dit, predictor)
    assert pred(latent, t, r, text, hidden).shape == latent.shape
    assert not torch.allclose(pred(latent, t, r, text, hidden), pred(latent, t, r, text, hidden * 0.5))


def test_demo_predictor_is_under_ten_percent_of_the_dit():
    """One block of twelve plus the fusion MLP (the issue's compute target is <= 10% of a full step)."""
    cfg = preset("demo")
    dit, predictor = build(cfg)
    assert num_params(predictor) <= 0.10 * num_params(dit)


def test_cli_preset_choices_match_registry():
    from disca.cli.export import PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS)


def test_presets_are_copies_and_bad_configs_fail():
    a = preset("tiny")
    a.dit.depth = 99
    assert preset("tiny").dit.depth != 99
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
    with pytest.raises(ConfigError, match="divisible"):
        DiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown DiTConfig fields"):
        ModelConfig.from_dict({"dit": {"widht": 3}, "predictor": {}})


def test_checkpoint_round_trip(tiny_model, tmp_path):
    cfg, dit, predictor = tiny_model
    save_checkpoint(tmp_path / "ckpt", cfg, dit, predictor)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    cfg2, dit2, pred2 = ckpt.cfg, ckpt.dit, ckpt.predictor
    assert cfg2 == cfg
    latent, t, r, text = _inputs(cfg)
    torch.testing.assert_close(dit2(latent, t, r, text), dit(latent, t, r, text), rtol=0, atol=0)
    assert isinstance(pred2, CachePredictor)
    assert not list(tmp_path.glob(".ckpt*"))  # no temporary directory left behind


def test_checkpoint_errors_name_the_problem(tiny_model, tmp_path):
    cfg, dit, predictor = tiny_model
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "ckpt", cfg, dit, predictor)
    (path / "predictor.safetensors").unlink()
    with pytest.raises(CheckpointError, match="predictor.safetensors is missing"):
        load_checkpoint(path)
    assert load_checkpoint(path, require_predictor=False).predictor is None
    (path / "dit.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    bigger = preset("tiny")
    bigger.dit.depth = 3
    save_checkpoint(tmp_path / "other", bigger, VideoDiT(bigger.dit))
    (tmp_path / "other" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(tmp_path / "other", require_predictor=False)


def test_x_prediction_head_returns_the_velocity_toward_its_clean_estimate(tiny_model):
    cfg = preset("tiny")
    cfg.dit.prediction = "x"
    dit = randomize_(VideoDiT(cfg.dit), 5)
    latent, t, r, text = _inputs(cfg)
    t = torch.tensor([0.7, 0.01])  # the second is below the clamp
    tokens, vec, rope = dit.embed(latent, t, r, text)
    hidden = dit.trunk(tokens, vec, rope)
    v = dit.head(hidden, vec, latent, t)
    cfg.dit.prediction = "velocity"  # the same weights read as a velocity model give the raw clean estimate
    raw = VideoDiT(cfg.dit)
    raw.load_state_dict(dit.state_dict())
    x_hat = raw.head(hidden, vec, latent, t)
    torch.testing.assert_close(v, (latent - x_hat) / torch.tensor([0.7, 0.05]).view(-1, 1, 1, 1, 1))


def test_residual_predictor_starts_as_plain_reuse():
    from disca.models import preset
    from disca.models.dit import VideoDiT
    from disca.models.predictor import CachePredictor

    cfg = preset("tiny")
    cfg.predictor.residual = True
    dit, predictor = VideoDiT(cfg.dit), CachePredictor(cfg.dit, cfg.predictor)
    x, t, text = torch.randn(1, 3, 2, 8, 8), torch.tensor([0.5]), torch.randn(1, 4, cfg.dit.text_dim)
    tokens, vec, rope = dit.embed(x, t, t, text)
    cached = torch.randn_like(tokens)
    torch.testing.assert_close(predictor(tokens, cached, vec, rope), cached)  # untrained: the cache itself
    with torch.no_grad():
        predictor.fusion[-1].bias.fill_(0.1)
    torch.testing.assert_close(predictor(tokens, cached, vec, rope), cached + 0.1)


@pytest.mark.parametrize("residual,modulate", [(False, False), (True, False), (True, True)])
def test_tokenwise_predictor_graph_equals_embed_predictor_head(residual, modulate):
    """A predictor without blocks runs the graph's short path (video tokens only, the patch embedding folded
    into the fusion): the velocity must equal the definition embed -> predictor -> head."""
    cfg = preset("tiny")
    cfg.predictor.depth, cfg.predictor.residual, cfg.predictor.modulate = 0, residual, modulate
    dit, predictor = build(cfg)
    randomize_(dit, 0)
    randomize_(predictor, 1)
    latent, t, r, text = _inputs(cfg)
    _, hidden = FullGraph(dit)(latent, t, r, text)
    with torch.no_grad():
        tokens, vec, rope = dit.embed(latent, t, r, text)
        reference = dit.head(predictor(tokens, hidden, vec, rope), vec, latent, t)
        fast = PredictorGraph(dit, predictor)(latent, t, r, text, hidden)
    assert reference.abs().max() > 1e-3  # not a trivially zero velocity
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_modulated_predictor_starts_unmodulated_and_then_reads_the_time():
    cfg = preset("tiny")
    cfg.predictor.depth, cfg.predictor.residual = 0, True
    plain = CachePredictor(cfg.dit, cfg.predictor)
    cfg.predictor.modulate = True
    torch.manual_seed(0)
    modulated = CachePredictor(cfg.dit, cfg.predictor)
    modulated.load_state_dict(plain.state_dict(), strict=False)  # same fusion; modulation stays zero
    with torch.no_grad():
        plain.fusion[-1].weight.normal_()
        modulated.fusion[-1].weight.copy_(plain.fusion[-1].weight)
    dit = VideoDiT(cfg.dit)
    randomize_(dit, 0)
    x, text = torch.randn(1, 3, 2, 8, 8), torch.randn(1, 4, cfg.dit.text_dim)
    tokens, vec_a, rope = dit.embed(x, torch.tensor([0.8]), torch.tensor([0.6]), text)
    _, vec_b, _ = dit.embed(x, torch.tensor([0.3]), torch.tensor([0.2]), text)
    cached = torch.randn_like(tokens)
    with torch.no_grad():
        torch.testing.assert_close(modulated(tokens, cached, vec_a, rope), plain(tokens, cached, vec_a, rope))
        modulated.modulation.weight.normal_()
        assert not torch.allclose(modulated(tokens, cached, vec_a, rope), modulated(tokens, cached, vec_b, rope))
