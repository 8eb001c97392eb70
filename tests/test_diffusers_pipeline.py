"""disca's runtime inside a diffusers WanPipeline (disca.integrations.diffusers_pipeline), on tiny random models.

The pipeline is assembled offline: a word-level tokenizer built with `tokenizers`, a tiny UMT5 encoder, a tiny
AutoencoderKLWan and the tiny Wan transformer of test_adapters. Reference: WanPipeline's own call (its own loop)
with diffusers' FlowMatchEulerDiscreteScheduler given disca's sigma grid.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the torch extra")
diffusers = pytest.importorskip("diffusers", reason="needs diffusers (dev extra)")
pytest.importorskip("transformers", reason="WanPipeline's text encoder needs transformers")
pytest.importorskip("onnxruntime")

from disca.errors import ShapeError  # noqa: E402
from disca.integrations.diffusers_pipeline import wan_generate  # noqa: E402
from disca.models import randomize_  # noqa: E402
from disca.models.adapters import adapt, build_predictor  # noqa: E402
from tests.test_adapters import tiny_host  # noqa: E402

PROMPT = "a red cat on the moon"
SEQ = 8  # max_sequence_length: prompts are padded to it, so the bundle's text_len range holds it
VIDEO = dict(height=64, width=64, num_frames=5)  # VAE /8 spatial, /4 temporal -> latent (2, 8, 8)
STEPS, SHIFT = 4, 5.0


class GridScheduler(diffusers.FlowMatchEulerDiscreteScheduler):
    """diffusers' own flow-matching Euler scheduler on disca's sigma grid.

    Its default grid, linspace(1, sigma_min, N) shifted, differs from disca's linspace(1, 0, N + 1)[:-1]
    shifted; custom `sigmas` are its public API (the shift is still applied by the scheduler).
    """

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1], device=device)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *PROMPT.split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_pipeline(with_text_encoder: bool = True):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    text_encoder = None
    if with_text_encoder:
        cfg = UMT5Config(vocab_size=16, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        text_encoder = UMT5EncoderModel(cfg).eval()
    vae = diffusers.AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],  # not 0 / 1: the de-normalisation before decoding is exercised
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    pipe = diffusers.WanPipeline(
        tokenizer=tiny_tokenizer() if with_text_encoder else None,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=GridScheduler(shift=SHIFT),
        transformer=tiny_host("wan"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def wan_bundle(pipe, tmp_path_factory):
    """The pipeline's transformer exported as a bundle (random predictor: the cached steps just have to run)."""
    from disca.build import build_bundle
    from disca.spec import ShapeRanges

    adapter = adapt(pipe.transformer).eval()
    predictor = randomize_(build_predictor(adapter, depth=1), 2).eval()
    ranges = ShapeRanges(batch=[1, 1, 2], frames=[1, 2, 4], height=[4, 8, 12], width=[4, 8, 12], text_len=[1, 8, 8])
    out = tmp_path_factory.mktemp("bundles") / "wan"
    return build_bundle(adapter.model_config(1), adapter, predictor, out, ranges=ranges, include_weights=False)


@pytest.fixture(scope="module")
def disca_pipe(wan_bundle):
    from disca.runtime import Pipeline

    with Pipeline.load(wan_bundle, backend="onnxruntime") as p:
        yield p


def generator():
    return torch.Generator().manual_seed(0)


@pytest.mark.slow
def test_all_full_matches_the_pipelines_own_loop(pipe, disca_pipe):
    common = dict(generator=generator(), max_sequence_length=SEQ, **VIDEO)
    ref_latent = pipe(PROMPT, guidance_scale=1.0, num_inference_steps=STEPS, output_type="latent", **common).frames
    common["generator"] = generator()
    ref = pipe(PROMPT, guidance_scale=1.0, num_inference_steps=STEPS, output_type="np", **common).frames
    common["generator"] = generator()
    got = wan_generate(pipe, disca_pipe, PROMPT, steps=STEPS, shift=SHIFT, anchors="full", **common)
    assert got.stats.full_calls == STEPS and got.stats.backend == "onnxruntime"
    ref_latent = ref_latent.numpy()
    assert np.linalg.norm(got.latents - ref_latent) / np.linalg.norm(ref_latent) < 1e-4
    assert got.frames.shape == ref.shape == (1, 5, 64, 64, 3)
    assert np.abs(got.frames - ref).max() < 1e-4
    assert 0.01 < ref.std()  # the decoded video is not a constant (no clamping hides a difference)


@pytest.mark.slow
def test_disca_schedule_runs_the_predictor_inside_the_pipeline(pipe, disca_pipe):
    full = wan_generate(
        pipe, disca_pipe, PROMPT, steps=STEPS, anchors="full", generator=generator(), **VIDEO, max_sequence_length=SEQ
    )
    cached = wan_generate(
        pipe, disca_pipe, PROMPT, steps=STEPS, anchors=[0, 2], generator=generator(), max_sequence_length=SEQ, **VIDEO
    )
    assert (cached.stats.full_calls, cached.stats.predictor_calls) == (2, 2)
    assert cached.frames.shape == full.frames.shape and np.isfinite(cached.frames).all()
    assert not np.allclose(cached.latents, full.latents)  # the cached steps really ran the predictor


@pytest.mark.slow
def test_prompt_embeds_without_a_text_encoder_and_shape_errors(pipe, disca_pipe):
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=SEQ)
    bare = tiny_pipeline(with_text_encoder=False)  # tokenizer=None, text_encoder=None: embeddings given
    a = wan_generate(bare, disca_pipe, prompt_embeds=emb, steps=STEPS, anchors="full", generator=generator(), **VIDEO)
    b = wan_generate(
        pipe, disca_pipe, PROMPT, steps=STEPS, anchors="full", generator=generator(), max_sequence_length=SEQ, **VIDEO
    )
    np.testing.assert_allclose(a.latents, b.latents, rtol=0, atol=1e-6)
    with pytest.raises(
        ShapeError, match="text_len=16 is outside the bundle's range 1..8"
    ):  # Wan pads to max_sequence_length: outside the bundle's range
        wan_generate(pipe, disca_pipe, PROMPT, steps=STEPS, anchors="full", max_sequence_length=16, **VIDEO)
    wrong = tiny_pipeline()
    wrong.vae.register_to_config(z_dim=16)
    with pytest.raises(ShapeError, match="16 channels, the bundle's model 4"):
        wan_generate(wrong, disca_pipe, PROMPT, steps=STEPS, **VIDEO)


def test_importing_the_integration_imports_neither_torch_nor_diffusers():
    code = "import sys, disca, disca.integrations.diffusers_pipeline as m; "
    code += "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'diffusers', 'transformers'}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
