"""load_model finds decoder blocks per architecture; layers resolve from ints and fractions."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPTNeoXConfig,
    MistralConfig,
    PhiConfig,
    Qwen2Config,
)

from harness import PowersteerError, load_model, resolve_layer, wrap_model
from harness.testing.tiny_models import char_tokenizer

SMALL = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 104,
}


@pytest.mark.parametrize(
    "config",
    [
        Qwen2Config(**SMALL),
        MistralConfig(**SMALL),
        GemmaConfig(**SMALL, head_dim=8),
        Gemma2Config(**SMALL, head_dim=8),
        Gemma3TextConfig(**SMALL, head_dim=8),
        PhiConfig(**SMALL),
        GPTNeoXConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            vocab_size=104,
        ),
    ],
    ids=lambda config: config.model_type,
)
def test_decoder_blocks_are_found_per_architecture(config):
    model = AutoModelForCausalLM.from_config(config)
    lm = wrap_model(model, char_tokenizer())
    assert lm.n_layers == 3 and lm.d_model == 16
    encoded = lm.tokenizer(["hi there"], return_tensors="pt")
    with torch.no_grad():
        states = lm.model(**encoded, output_hidden_states=True).hidden_states
    captured = []
    handle = lm.blocks[1].register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        lm.model(**encoded)
    handle.remove()
    output = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
    assert torch.allclose(output, states[2], atol=1e-6)  # block 1's output is h_1


def test_unsupported_architecture_names_itself():
    class Strange(torch.nn.Module):
        config = type("Config", (), {"model_type": "strange_arch"})()

    with pytest.raises(PowersteerError, match="'strange_arch'.*blocks_path"):
        wrap_model(Strange(), char_tokenizer())


def test_load_model_from_a_local_directory(tmp_path, qwen3_tiny):
    qwen3_tiny.model.save_pretrained(tmp_path)
    qwen3_tiny.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), dtype="float64")
    assert (lm.n_layers, lm.d_model, lm.dtype) == (4, 32, torch.float64)
    assert lm.model_type == "qwen3"


def test_load_model_with_a_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(PowersteerError, match="could not load model"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(PowersteerError, match="dtype='float8' is unknown"):
        load_model(str(tmp_path), dtype="float8")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (0, 0),
        (5, 5),
        (-1, 27),
        (-28, 0),
        (0.0, 0),
        (0.25, 7),
        (0.5, 14),
        (1.0, 27),
        ("7", 7),
        ("-2", 26),
        ("0.75", 20),
    ],
)
def test_layer_specs_resolve(spec, expected):
    assert resolve_layer(spec, 28) == expected


@pytest.mark.parametrize("spec", [28, -29, 1.5, -0.1, "deep", True, None])
def test_bad_layer_specs_are_refused(spec):
    with pytest.raises(PowersteerError):
        resolve_layer(spec, 28)
