"""The steering hook adds exactly the vector, per row if asked, and always cleans up."""

from __future__ import annotations

import pytest
import torch

from harness import PowersteerError, steer
from harness.engine.steering import add_to_residual

PROMPTS = ["ab c", "hello world"]


def residual_entering(lm, block: int) -> torch.Tensor:
    """The residual stream as block ``block`` receives it: what really propagates."""
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    captured = []

    def record(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])

    handle = lm.blocks[block].register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**encoded)
    finally:
        handle.remove()
    return captured[0]


def test_steered_states_differ_by_exactly_the_vector_at_the_source(any_tiny_model):
    lm = any_tiny_model
    vector = torch.randn(lm.d_model, dtype=torch.float64)
    plain = [residual_entering(lm, block) for block in (1, 2, 3)]
    with steer(lm, vector, layer=1, scale=2.5):
        steered = [residual_entering(lm, block) for block in (1, 2, 3)]
    difference = steered[1] - plain[1]  # block 2's input is block 1's output
    assert torch.allclose(difference, (2.5 * vector).expand_as(difference), atol=1e-12)
    assert torch.equal(steered[0], plain[0])  # earlier blocks untouched
    assert not torch.allclose(steered[2], plain[2])  # later blocks respond


def test_output_hidden_states_show_the_steered_residual(qwen3_tiny):
    lm = qwen3_tiny
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    vector = torch.randn(lm.d_model, dtype=torch.float64)
    with torch.no_grad():
        plain = lm.model(**encoded, output_hidden_states=True).hidden_states
        with steer(lm, vector, layer=1, scale=-1.5):
            steered = lm.model(**encoded, output_hidden_states=True).hidden_states
    difference = steered[2] - plain[2]
    assert torch.allclose(difference, (-1.5 * vector).expand_as(difference), atol=1e-12)


def test_per_row_vectors_match_one_row_at_a_time(qwen3_tiny):
    lm = qwen3_tiny
    vectors = torch.randn(2, lm.d_model, dtype=torch.float64)
    scales = torch.tensor([1.0, -3.0], dtype=torch.float64)
    encoded = lm.tokenizer(["hello", "hello"], return_tensors="pt")
    with torch.no_grad(), steer(lm, vectors, layer=0, scale=scales):
        batched = lm.model(**encoded).logits
    for row in range(2):
        with torch.no_grad(), steer(lm, vectors[row], layer=0, scale=float(scales[row])):
            alone = lm.model(**{k: v[row : row + 1] for k, v in encoded.items()}).logits
        assert torch.allclose(batched[row], alone[0], atol=1e-10)


def test_generated_tokens_are_steered_too(qwen3_tiny):
    lm = qwen3_tiny
    encoded = lm.tokenizer(["hello"], return_tensors="pt")
    seen_lengths = []
    vector = torch.zeros(lm.d_model, dtype=torch.float64)
    handle = lm.blocks[0].register_forward_hook(
        lambda module, args, out: seen_lengths.append(out.shape[1])
    )
    try:
        with steer(lm, vector, layer=0, scale=1.0):
            lm.model.generate(
                **encoded, max_new_tokens=3, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
            )
    finally:
        handle.remove()
    assert seen_lengths == [5, 1, 1]  # the prompt, then each new token through the hook


def test_from_position_steers_that_position_and_later_only(qwen3_tiny):
    lm = qwen3_tiny
    delta = torch.randn(1, 1, lm.d_model, dtype=torch.float64)
    plain = residual_entering(lm, 2)
    with add_to_residual(lm, 1, delta, from_position=3):
        steered = residual_entering(lm, 2)
    assert torch.equal(steered[:, :3], plain[:, :3])
    expected = plain[:, 3:] + delta
    assert torch.allclose(steered[:, 3:], expected, atol=1e-12)


def test_from_position_counts_positions_of_the_whole_sequence_when_generating(qwen3_tiny):
    """Cached generation sees one new token per pass; it is steered by where it sits."""
    lm = qwen3_tiny
    ids = lm.tokenizer(["hello"], return_tensors="pt")["input_ids"]
    delta = torch.randn(1, 1, lm.d_model, dtype=torch.float64)
    start = ids.shape[1] + 1  # the second generated token is the first one steered
    with torch.no_grad(), add_to_residual(lm, 1, delta, from_position=start):
        generated = lm.model.generate(
            ids,
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        sequence, uncached = ids, []
        for _ in range(4):  # the same greedy steps, each a full pass without a cache
            uncached.append(lm.model(sequence).logits[:, -1])
            sequence = torch.cat([sequence, uncached[-1].argmax(-1, keepdim=True)], dim=1)
    # generate hands back float32 logits whatever the model's dtype.
    torch.testing.assert_close(torch.stack(generated.logits), torch.stack(uncached).float())
    assert torch.equal(generated.sequences, sequence)
    with torch.no_grad():
        plain = lm.model(sequence[:, :-1]).logits[:, -1]
    assert not torch.allclose(plain, uncached[-1])  # the later steps really were steered


def test_hook_is_removed_even_when_the_body_raises(qwen3_tiny):
    lm = qwen3_tiny
    plain = residual_entering(lm, 2)
    hooks_before = dict(lm.blocks[1]._forward_hooks)  # transformers keeps hooks of its own
    with pytest.raises(RuntimeError, match="boom"), steer(lm, torch.ones(lm.d_model), 1, 5.0):
        raise RuntimeError("boom")
    assert torch.equal(residual_entering(lm, 2), plain)
    assert dict(lm.blocks[1]._forward_hooks) == hooks_before


def test_mismatched_rows_and_dimensions_are_clear_errors(qwen3_tiny):
    lm = qwen3_tiny
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(PowersteerError, match="3 per-row steering vectors for a batch of 2"):
        with steer(lm, torch.ones(3, lm.d_model), layer=0):
            lm.model(**encoded)
    with pytest.raises(PowersteerError, match="d_model=32"):
        with steer(lm, torch.ones(7), layer=0):
            pass
    with pytest.raises(PowersteerError, match="NaN"):
        with steer(lm, torch.full((lm.d_model,), float("nan")), layer=0):
            pass
    with pytest.raises(PowersteerError, match="out of range"):
        with steer(lm, torch.ones(lm.d_model), layer=4):
            pass
