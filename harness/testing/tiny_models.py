"""Tiny randomly initialised models of several architectures, built offline from configs."""

from __future__ import annotations

import string
import types

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from harness.engine.models import LanguageModel, wrap_model

ARCHITECTURES = ("qwen3", "llama", "gpt2")


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
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    if architecture == "qwen3":
        config = Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=d_model // 4,
            max_position_embeddings=256,
            attn_implementation=attn_implementation,
        )
        model = Qwen3ForCausalLM(config)
    elif architecture == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            attn_implementation=attn_implementation,
        )
        model = LlamaForCausalLM(config)
    elif architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=256,
            attn_implementation=attn_implementation,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"no tiny config for {architecture!r}")
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


def _keep_norms_in_float64(model: torch.nn.Module) -> None:
    """Make RMSNorm compute in the input's dtype.

    transformers' RMSNorm casts its input to float32, which for a float64 model rounds
    every activation to float32 precision (relative 1e-7) and makes a 1e-8 comparison of
    derivatives meaningless. Same formula, computed in float64.
    """

    def forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(forward, module)
