"""Tiny randomly initialised models of several architectures, built offline from configs."""

from __future__ import annotations

import string
import types

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from harness.engine.models import LanguageModel, wrap_model

ARCHITECTURES = ("qwen3", "llama", "gpt2")
"""The architectures the shared ``any_tiny_model`` fixture runs every test on."""

SUBLAYER_ARCHITECTURES = ("qwen3", "llama", "gemma3", "gpt2")
"""Also Gemma-3, whose norms after the attention and the MLP make the hook sites differ."""


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable character, made offline."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + list(string.printable))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def tiny_model(
    architecture: str,
    *,
    d_model: int = 32,
    n_layers: int = 4,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> LanguageModel:
    """A randomly initialised ``architecture`` model small enough for exact Jacobians."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = _random_model(architecture, tokenizer, d_model, n_layers, attn_implementation)
    # Random init with std 0.02 makes every block nearly the identity; larger weights give
    # a Jacobian whose spectrum looks like a trained model's (decaying, with gaps).
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2 and "emb" not in name and "wte" not in name:
                parameter.normal_(0.0, 1.0 / parameter.shape[1] ** 0.5)
    model = model.to(dtype)
    if dtype == torch.float64:
        _keep_norms_in_float64(model)
    return wrap_model(model, tokenizer, name=f"tiny-{architecture}")


def _random_model(
    architecture: str,
    tokenizer: PreTrainedTokenizerFast,
    d_model: int,
    n_layers: int,
    attn_implementation: str,
) -> PreTrainedModel:
    """The ``architecture`` model at these sizes, with transformers' random init."""
    decoder = {  # the sizes every Llama-style config is given
        "vocab_size": len(tokenizer),
        "hidden_size": d_model,
        "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
        "attn_implementation": attn_implementation,
    }
    grouped_heads = {"num_key_value_heads": 2, "head_dim": d_model // 4}
    if architecture == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**decoder, **grouped_heads))
    if architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**decoder, num_key_value_heads=4))
    if architecture == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=256,
            attn_implementation=attn_implementation,
        )
        return GPT2LMHeadModel(config)
    if architecture == "gemma3":
        config = Gemma3TextConfig(
            **decoder,
            **grouped_heads,
            query_pre_attn_scalar=d_model // 4,
            # A window shorter than the longer test prompts, and one global layer, as the
            # real model interleaves them.
            sliding_window=8,
            layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return Gemma3ForCausalLM(config)
    raise ValueError(f"no tiny config for {architecture!r}")


def _keep_norms_in_float64(model: torch.nn.Module) -> None:
    """Make RMSNorm compute in the input's dtype.

    transformers' RMSNorm casts its input to float32, which for a float64 model rounds
    every activation to float32 precision (relative 1e-7) and makes a 1e-8 comparison of
    derivatives meaningless. Same formula, computed in float64: Gemma's norm scales by
    ``1 + weight`` and names its epsilon ``eps``, the others scale by ``weight``.
    """

    def forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    def gemma_forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return (1.0 + self.weight) * (hidden * torch.rsqrt(variance + self.eps))

    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            chosen = gemma_forward if name.startswith("Gemma") else forward
            module.forward = types.MethodType(chosen, module)
