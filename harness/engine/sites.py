"""Hook sites: where on a decoder block a vector is added or an activation is read.

``"block"`` is the block's output, the residual stream ``h_l``. ``"attn"`` and ``"mlp"``
are the outputs of the block's attention and MLP sub-layers themselves, before they join
the residual. On pre-norm blocks (Llama, Qwen, Mistral, GPT-2) the MLP output is added
straight to the residual at the end of the block, so adding a vector there equals adding
it to the block output. Blocks that normalise a sub-layer's output before adding it
(``post_attention_layernorm`` / ``post_feedforward_layernorm`` on Gemma 2 and 3, OLMo 2)
pass a vector added at ``"mlp"`` through that norm first, so the two differ. The
reference Power Steering code adds at ``mlp.down_proj``, the MLP module's output.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from harness.engine.models import LanguageModel
from harness.errors import PowersteerError

Site = Literal["block", "attn", "mlp"]
SITES: tuple[Site, ...] = ("block", "attn", "mlp")

# Attribute names of a block's sub-layers across transformers architectures, tried in
# order: Llama/Qwen/Gemma/Mistral/Phi/OLMo use self_attn and mlp, GPT-2/GPT-J attn and
# mlp, GPT-NeoX attention and mlp, older Mixtral block_sparse_moe.
SUBLAYER_NAMES: dict[str, tuple[str, ...]] = {
    "attn": ("self_attn", "attn", "attention", "self_attention"),
    "mlp": ("mlp", "feed_forward", "block_sparse_moe", "ffn"),
}
SITE_LABELS: dict[str, str] = {"attn": "attention", "mlp": "MLP"}


def check_site(site: str, *, name: str = "site") -> Site:
    """``site`` if it names a hook site; otherwise one clear error."""
    if site not in SITES:
        raise PowersteerError(f"{name}={site!r} is not a hook site; use one of {', '.join(SITES)}")
    return site  # type: ignore[return-value]


def site_module(lm: LanguageModel, layer: int, site: Site) -> nn.Module:
    """The module of block ``layer`` whose output is hook site ``site``.

    Raises a :class:`PowersteerError` naming the block's child modules where the block has
    no recognisable attention or MLP sub-layer.
    """
    block = lm.blocks[layer]
    if check_site(site) == "block":
        return block
    for attribute in SUBLAYER_NAMES[site]:
        module = getattr(block, attribute, None)
        if isinstance(module, nn.Module):
            return module
    children = ", ".join(name for name, _ in block.named_children()) or "none"
    raise PowersteerError(
        f"cannot find the {SITE_LABELS[site]} sub-layer of decoder block {layer} of "
        f"{lm.model_type!r} ({type(block).__name__}); looked for "
        f"{' / '.join(SUBLAYER_NAMES[site])}, the block's child modules are: {children}. "
        "Use site 'block' (the block output) for this architecture"
    )


def site_output(output: object) -> torch.Tensor:
    """The activation a hooked module returns: the first element of a tuple output (attention
    modules return ``(output, weights)``), else the output itself."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def with_site_output(output: object, activation: torch.Tensor) -> object:
    """``output`` with its activation (see :func:`site_output`) replaced by ``activation``."""
    return (activation, *output[1:]) if isinstance(output, tuple) else activation
