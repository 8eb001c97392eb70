"""The procedural text-to-video task: generator, prompt vocabulary, and the prompt-adherence evaluator."""

import numpy as np
import pytest

from disca.errors import DiscaError
from disca.task import (
    COLORS,
    MOTIONS,
    PROMPT_LENGTH,
    SHAPES,
    VOCAB,
    Attributes,
    degrade,
    parse_prompt,
    prompt_for,
    random_attributes,
    read_clip,
    render_clip,
    sample_batch,
    score,
    tokenize,
)

ATTRS = ("color", "shape", "motion")


@pytest.fixture(scope="module")
def batch():
    return sample_batch(np.random.default_rng(1234), 300)


def test_generator_is_deterministic_given_the_rng():
    a_clips, a_prompts, a_attrs = sample_batch(np.random.default_rng(7), 5)
    b_clips, b_prompts, b_attrs = sample_batch(np.random.default_rng(7), 5)
    np.testing.assert_array_equal(a_clips, b_clips)
    assert a_prompts == b_prompts and a_attrs == b_attrs
    c_clips, _, _ = sample_batch(np.random.default_rng(8), 5)
    assert not np.array_equal(a_clips, c_clips)


def test_clip_shape_dtype_and_range():
    clips, prompts, attrs = sample_batch(np.random.default_rng(0), 4, frames=6, size=40)
    assert clips.shape == (4, 3, 6, 40, 40) and clips.dtype == np.float32
    assert clips.min() >= -1.0 and clips.max() <= 1.0
    assert len(prompts) == len(attrs) == 4
    one = render_clip(Attributes("red", "circle", "left"), np.random.default_rng(0))
    assert one.shape == (3, 8, 32, 32) and one.dtype == np.float32


def test_render_rejects_bad_attributes_and_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(DiscaError, match="unknown color 'purple'"):
        render_clip(Attributes("purple", "circle", "left"), rng)
    with pytest.raises(DiscaError, match="at least 2 frames"):
        render_clip(Attributes("red", "circle", "left"), rng, frames=1)


def test_random_attributes_cover_every_value():
    rng = np.random.default_rng(0)
    seen = [random_attributes(rng) for _ in range(500)]
    assert {a.color for a in seen} == set(COLORS)
    assert {a.shape for a in seen} == set(SHAPES)
    assert {a.motion for a in seen} == set(MOTIONS)


def test_prompt_round_trip_for_every_attribute_combination():
    for color in COLORS:
        for shape in SHAPES:
            for motion in MOTIONS:
                attrs = Attributes(color, shape, motion)
                prompt = prompt_for(attrs)
                assert parse_prompt(prompt) == attrs
                ids = tokenize(prompt)
                assert len(ids) == PROMPT_LENGTH
                assert " ".join(VOCAB[i] for i in ids) == prompt
    assert prompt_for(Attributes("red", "circle", "left")) == "a red circle moving left"
    assert parse_prompt("  A Red  CIRCLE moving left ") == Attributes("red", "circle", "left")


def test_unknown_word_error_lists_the_known_words():
    for call in (parse_prompt, tokenize):
        with pytest.raises(DiscaError) as err:
            call("a purple circle moving left")
        message = str(err.value)
        assert "unknown word 'purple'" in message
        assert all(word in message for word in VOCAB)


def test_known_words_out_of_grammar_are_rejected():
    with pytest.raises(DiscaError, match="grammar"):
        parse_prompt("a red circle growing left")
    with pytest.raises(DiscaError, match="grammar"):
        parse_prompt("a circle red moving left")


def test_evaluator_reads_clean_clips(batch):
    clips, prompts, _ = batch
    result = score(clips, prompts)
    assert result["n"] == 300
    for key in ATTRS:
        assert result[key] >= 0.98, result


def test_evaluator_reads_noisy_blurred_clips(batch):
    clips, prompts, _ = batch
    result = score(degrade(clips, np.random.default_rng(99), noise_std=0.1, blur=True), prompts)
    for key in ATTRS:
        assert result[key] >= 0.98, result


def test_evaluator_rejects_wrong_prompts(batch):
    # Prompts of other clips: each attribute matches only by chance.
    clips, prompts, _ = batch
    shuffled = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    assert score(clips, shuffled)["all"] < 0.2


def test_evaluator_does_not_accept_noise_or_blank_clips(batch):
    clips, prompts, _ = batch
    rng = np.random.default_rng(5)
    noise = rng.uniform(-1, 1, size=clips.shape).astype(np.float32)
    assert score(noise, prompts)["all"] < 0.1
    # Not just wrong by luck: the evaluator sees no object at all in noise.
    unread = sum(read_clip(clip) == Attributes(None, None, None) for clip in noise[:50])
    assert unread >= 45
    blank = np.zeros_like(clips)
    assert score(blank, prompts)["all"] == 0.0
    assert read_clip(blank[0]) == Attributes(None, None, None)


def test_frozen_clip_has_no_motion(batch):
    clips, prompts, _ = batch
    frozen = np.repeat(clips[:50, :, :1], clips.shape[2], axis=2)
    result = score(frozen, prompts[:50])
    assert result["color"] >= 0.98 and result["motion"] == 0.0


def test_score_checks_its_inputs(batch):
    clips, prompts, _ = batch
    with pytest.raises(DiscaError, match="2 clips but 1 prompts"):
        score(clips[:2], prompts[:1])
    with pytest.raises(DiscaError, match="unknown word"):
        score(clips[:1], ["a red blob moving left"])
    with pytest.raises(DiscaError, match="expects one clip"):
        read_clip(clips[:2])
    with pytest.raises(DiscaError, match="one prompt per clip"):
        score(None, prompts[:1])
    with pytest.raises(DiscaError, match="a prompt must be text"):
        score(clips[:1], [None])  # was an AttributeError from str methods
    with pytest.raises(DiscaError, match="noise_std must be a finite number"):
        degrade(clips[:1], np.random.default_rng(0), noise_std=float("nan"))  # nan added no noise at all


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sample_batch(np.random.RandomState(0), 2), "rng must be a numpy Generator"),
        (lambda: sample_batch(np.random.default_rng(0), 2.5), "n must be a non-negative integer, got 2.5"),
        (lambda: sample_batch(np.random.default_rng(0), -1), "n must be a non-negative integer, got -1"),
        (lambda: sample_batch(np.random.default_rng(0), 1, frames=True), "frames must be a non-negative integer"),
        (lambda: sample_batch(np.random.default_rng(0), 1, size="32"), "size must be a non-negative integer"),
        (lambda: render_clip(random_attributes(np.random.default_rng(0)), 7), "rng must be a numpy Generator"),
        (lambda: render_clip(random_attributes(np.random.default_rng(0)), np.random.default_rng(0), 8.0), "frames"),
    ],
)
def test_clip_drawing_refuses_wrong_kinds_with_a_disca_error(call, message):
    with pytest.raises(DiscaError, match=message):
        call()
    clips, prompts, _ = sample_batch(np.random.default_rng(0), np.int64(2), frames=2, size=16)  # numpy ints are fine
    assert clips.shape == (2, 3, 2, 16, 16) and len(prompts) == 2
