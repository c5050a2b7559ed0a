"""Load a causal language model and know where its decoder blocks are.

This module is the one place that knows model layouts: every other part of powersteer
asks a :class:`LanguageModel` for its blocks instead of guessing module paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from harness.engine.catalogue import ORGANISM_DIR, resolve_source
from harness.engine.layers import LayerSpec, resolve_layer
from harness.errors import PowersteerError

# model_type -> dotted path of the decoder blocks, from the top-level *ForCausalLM module.
DECODER_BLOCKS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen2_moe": "model.layers",
    "qwen3": "model.layers",
    "qwen3_moe": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "gptj": "transformer.h",
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
"""A saved tokenizer holds at least one of these (save_pretrained writes the first two)."""


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer and the list of its decoder blocks.

    ``blocks[l]`` is decoder block ``l``; its output is the residual stream ``h_l``
    (what ``output_hidden_states[l + 1]`` holds, before any final norm).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    blocks: nn.ModuleList
    name: str

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of iterates and accumulations: float64 for a float64 model, float32
        otherwise, so a bf16 or fp16 model's passes never round an orthonormal basis or an
        optimised vector to half precision."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def layer(self, spec: LayerSpec, *, name: str = "layer") -> int:
        """Resolve an int (negative from the end) or a fraction of depth to a block index."""
        return resolve_layer(spec, self.n_layers, name=name)


def wrap_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str | None = None,
    blocks_path: str | None = None,
) -> LanguageModel:
    """Wrap an already-built model and tokenizer (for example one made from a config)."""
    model.eval()
    model.requires_grad_(False)  # steering never trains weights; autograd flows to vectors only
    _ensure_pad_token(tokenizer)
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        blocks=find_decoder_blocks(model, blocks_path),
        name=name or str(getattr(model, "name_or_path", "") or model.config.model_type),
    )


def load_model(
    name_or_path: str | os.PathLike[str] = "organism",
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    *,
    revision: str | None = None,
    attn_implementation: str | None = None,
    blocks_path: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> LanguageModel:
    """Load a causal LM by hub id, local directory, or ``"organism"`` (the bundled model).

    Also a catalogue name (``powersteer models list``; fetched and cached on first use), a
    ``.gguf`` file, or a directory with ``gguf_file`` naming the GGUF file in it: GGUF
    checkpoints are dequantized once and cached as safetensors (see ``harness.engine.catalogue``).

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (spread over the
    available devices with ``device_map="auto"``). ``blocks_path`` names the decoder-block
    list (for example ``"model.layers"``) for architectures powersteer does not know.
    """
    torch_dtype = _resolve_dtype(dtype)  # first: a bad flag is refused before any file work
    source = _resolve_source(name_or_path, gguf_file)
    device_kwargs = {"device_map": "auto"} if device == "auto" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=revision,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **device_kwargs,
        )
    except OSError as error:
        raise PowersteerError(
            f"could not load model {str(name_or_path)!r}: {error}. Give a local directory "
            "holding config.json and weights, a reachable hub id, or 'organism'"
        ) from error
    if device != "auto":
        model.to(device)
    return wrap_model(model, tokenizer, name=str(name_or_path), blocks_path=blocks_path)


def find_decoder_blocks(model: nn.Module, blocks_path: str | None = None) -> nn.ModuleList:
    """Return the list of decoder blocks of ``model``, in order."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
    path = blocks_path or DECODER_BLOCKS.get(model_type)
    if path is None:
        raise PowersteerError(
            f"architecture {model_type!r} ({type(model).__name__}) is not supported: powersteer "
            f"knows {', '.join(sorted(DECODER_BLOCKS))}. Pass blocks_path='...' (the dotted "
            "path of its decoder-block list, e.g. 'model.layers') to load_model"
        )
    module: object = model
    for attribute in path.split("."):
        module = getattr(module, attribute, None)
        if module is None:
            raise PowersteerError(
                f"model {type(model).__name__} has no decoder-block list at {path!r}; "
                "pass the right blocks_path to load_model"
            )
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        raise PowersteerError(f"{path!r} in {type(model).__name__} is not a list of blocks")
    return module


def _resolve_source(name_or_path: str | os.PathLike[str], gguf_file: str | None = None) -> str:
    if str(name_or_path) == "organism" and gguf_file is None:
        if not (ORGANISM_DIR / "config.json").exists():
            raise PowersteerError(
                f"the bundled organism weights are missing from {ORGANISM_DIR}; reinstall "
                "powersteer or retrain them with `python -m harness.organism.train`"
            )
        return str(ORGANISM_DIR)
    converted = resolve_source(name_or_path, gguf_file)  # catalogue names and GGUF files
    if converted is not None:
        return str(converted)
    path = Path(name_or_path).expanduser()
    if path.exists():
        _check_model_directory(path)
        return str(path)
    return str(name_or_path)


def _check_model_directory(path: Path) -> None:
    """Refuse a local path that cannot be a model before the loaders' own errors would."""
    if not path.is_dir():
        raise PowersteerError(
            f"model {str(path)!r} is a file, not a model directory; give a directory saved "
            "with save_pretrained, a .gguf file, a hub id or a catalogue name"
        )
    lacking = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        lacking.append("tokenizer files (tokenizer.json, tokenizer_config.json)")
    if lacking:
        raise PowersteerError(
            f"model {str(path)!r} is not a model directory: it has no "
            f"{' and no '.join(lacking)}; give a directory saved with save_pretrained (model "
            "and tokenizer), a .gguf file, a hub id or a catalogue name"
        )


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise PowersteerError(f"dtype={dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    # Batched passes need a pad id; the pad positions are masked out of every result.
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:  # any in-vocabulary token will do: pad positions never reach a result
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
