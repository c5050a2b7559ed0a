"""The one place that adds a vector to the residual stream (at a block's output or at one of
its sub-layers), the unit of steering scale, and forward passes that stop early."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch
from harness.engine.sites import Site, site_module, site_output, with_site_output
from harness.errors import PowersteerError

# Set inside :func:`without_steering`: every steering hook then leaves its output alone.
_STEERING_PAUSED: ContextVar[bool] = ContextVar("steering_paused", default=False)


@contextmanager
def add_to_residual(
    lm: LanguageModel,
    layer: int,
    delta: torch.Tensor,
    *,
    from_position: int = 0,
    site: Site = "block",
) -> Iterator[None]:
    """Add ``delta`` to the output of decoder block ``layer`` on every forward pass.

    ``delta`` broadcasts against the block output ``(batch, tokens, d_model)``: shape
    ``(1, 1, d)`` adds one vector everywhere, ``(batch, 1, d)`` one vector per row at every
    position. During generation with a KV cache each new token passes through the hook
    too, so generated positions are steered as well. The hook is removed on exit, also
    when the body raises. ``output_hidden_states[layer + 1]`` shows the steered residual.

    ``site`` ``"attn"`` or ``"mlp"`` adds ``delta`` to the output of the block's attention
    or MLP sub-layer instead, before the block adds it to the residual (see
    :mod:`harness.engine.sites`).

    ``from_position`` steers only tokens at that position of the whole sequence and later.
    Positions are the ``position_ids`` the model hands the block, so a cached generation
    step (one new token per pass) is steered by where that token sits in the sequence, and
    left padding does not shift real tokens (``generate`` counts positions from the first
    real one). A block given no ``position_ids`` counts positions within the pass.
    """
    d_model = lm.d_model
    if delta.shape[-1] != d_model:
        raise PowersteerError(
            f"steering vector has dimension {delta.shape[-1]} but the model's residual "
            f"stream has d_model={d_model}; use vectors computed for this model"
        )
    module = site_module(lm, layer, site)
    block_kwargs: dict = {}  # what the block was called with, for a sub-layer's positions

    def remember_block_kwargs(block: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        block_kwargs.clear()
        block_kwargs.update(kwargs)

    hook = _adding_hook(delta, from_position, None if site == "block" else block_kwargs)
    with ExitStack() as hooks:
        if site != "block" and from_position > 0:
            block = lm.blocks[layer]
            hooks.callback(
                block.register_forward_pre_hook(remember_block_kwargs, with_kwargs=True).remove
            )
        # Prepended so the edit happens before any other hook on the module sees its output:
        # transformers' own output-capturing hook then records the steered activation too.
        hooks.callback(module.register_forward_hook(hook, with_kwargs=True, prepend=True).remove)
        yield


@contextmanager
def without_steering() -> Iterator[None]:
    """Forward passes inside run unsteered although steering hooks are installed: what a
    scorer comparing with the unsteered model (``kl_from_unsteered``) needs mid-sweep."""
    token = _STEERING_PAUSED.set(True)
    try:
        yield
    finally:
        _STEERING_PAUSED.reset(token)


def _adding_hook(
    delta: torch.Tensor, from_position: int, block_kwargs: dict | None
) -> Callable[..., object]:
    """A forward hook adding ``delta`` to its module's output. Positions come from the
    module's own call (a block) or, for a sub-layer, from ``block_kwargs``: what its block
    was called with (sub-layers are not all handed ``position_ids``)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        if _STEERING_PAUSED.get():
            return None  # a forward hook returning None keeps the output unchanged
        hidden = site_output(output)
        if delta.shape[0] not in (1, hidden.shape[0]):
            raise PowersteerError(
                f"{delta.shape[0]} per-row steering vectors for a batch of {hidden.shape[0]} "
                "rows; give one vector for all rows or one per row"
            )
        shift = delta.to(dtype=hidden.dtype, device=hidden.device)
        if from_position > 0:
            called_with = kwargs if block_kwargs is None else block_kwargs
            shift = _steered_positions(called_with, hidden, from_position) * shift
        return with_site_output(output, hidden + shift)

    return hook


def _steered_positions(kwargs: dict, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """``(rows or 1, tokens, 1)``: 1 where the token's position is ``>= start``, else 0."""
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    return (positions >= start).to(hidden.dtype)[..., None]


@contextmanager
def steer(
    lm: LanguageModel,
    vectors: torch.Tensor,
    layer: int | float | str,
    scale: float | torch.Tensor = 1.0,
    *,
    site: Site = "block",
) -> Iterator[None]:
    """Steer ``lm`` by adding ``scale * vector`` to the output of block ``layer``.

    ``vectors`` is ``(d_model,)`` for one vector on every row, or ``(batch, d_model)`` for a
    vector per row, so one forward or ``generate`` call can sweep many vectors and scales.
    ``scale`` is a float or a ``(batch,)`` tensor. Every position is steered: the prompt
    and each generated token. Raw units: the sweep converts scales given in residual
    norms before calling this. ``site`` ``"attn"`` or ``"mlp"`` adds to that sub-layer's
    output instead (see :mod:`harness.engine.sites`).

    >>> with steer(lm, result.vectors[0], layer=6, scale=8.0):
    ...     lm.model.generate(**inputs)
    """
    vectors = torch.as_tensor(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise PowersteerError(
            f"steering vectors must be (d_model,) or (batch, d_model), got {tuple(vectors.shape)}"
        )
    scale = torch.as_tensor(scale, dtype=vectors.dtype)
    scale = scale.reshape(-1, 1) if scale.ndim else scale
    if not torch.isfinite(vectors).all() or not torch.isfinite(scale).all():
        raise PowersteerError("steering vectors or scales contain NaN or infinity")
    block = lm.layer(layer)
    with add_to_residual(lm, block, (scale * vectors)[:, None, :], site=site):
        yield


class _ReachedTarget(Exception):
    """Raised by the capture hook to stop a forward pass once the last target block has run."""


def run_to_block(
    lm: LanguageModel,
    batch: PromptBatch,
    target: int,
    *,
    source: int | None = None,
    delta: torch.Tensor | None = None,
    source_site: Site = "block",
    target_site: Site = "block",
) -> torch.Tensor:
    """Residual stream ``h_target`` of shape ``(rows, tokens, d_model)``, steered or not.

    With ``source`` and ``delta`` given, ``delta`` is added to ``h_source`` first (see
    :func:`add_to_residual`). The pass stops right after block ``target``: later blocks,
    the final norm and the unembedding never run. Autograd and forward-mode tangents flow
    from ``delta`` to the result. ``source_site`` and ``target_site`` move the addition and
    the reading to a sub-layer's output (see :mod:`harness.engine.sites`); the pass then
    stops right after the target sub-layer.
    """
    deltas = {source: delta} if delta is not None and source is not None else {}
    hidden = run_to_blocks(
        lm, batch, [target], deltas, source_site=source_site, target_site=target_site
    )
    return hidden[target]


def run_to_blocks(
    lm: LanguageModel,
    batch: PromptBatch,
    targets: Sequence[int],
    deltas: Mapping[int, torch.Tensor] | None = None,
    *,
    source_site: Site = "block",
    target_site: Site = "block",
) -> dict[int, torch.Tensor]:
    """Residual streams ``{t: h_t}`` for several blocks from one pass, with ``deltas[s]``
    added to ``h_s`` for each source ``s``; stops after the last target block. The sites
    say which output of each source and target block is meant (the block's by default)."""
    captured: dict[int, torch.Tensor] = {}
    last = max(targets)

    def capture_hook(block: int) -> Callable[..., None]:
        def capture(module: torch.nn.Module, inputs: object, output: object) -> None:
            captured[block] = site_output(output)
            if block == last:
                raise _ReachedTarget

        return capture

    handles = [
        site_module(lm, t, target_site).register_forward_hook(capture_hook(t)) for t in set(targets)
    ]
    try:
        with ExitStack() as steering:
            for source, delta in (deltas or {}).items():
                steering.enter_context(add_to_residual(lm, source, delta, site=source_site))
            lm.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            )
    except _ReachedTarget:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def scale_unit(lm: LanguageModel, batch: PromptBatch, layer: int) -> float:
    """The median over real tokens of ``‖h_layer‖₂``, the unit steering scales are multiples of.

    A scale of 2 at ``layer`` adds a vector twice as long as the typical residual there.
    """
    with torch.no_grad():
        hidden = run_to_block(lm, batch, layer)
    norms = hidden[batch.attention_mask.bool()].float().norm(dim=-1)
    return float(norms.median())


@contextmanager
def autodiff_attention(lm: LanguageModel) -> Iterator[None]:
    """Route attention through kernels that support forward-mode AD and double backward.

    The fused SDPA kernels have neither, so inside this context SDPA is restricted to its
    math backend, and flash-attention implementations are swapped for SDPA. Plain
    generation outside the context keeps the fast kernels.
    """
    implementation = getattr(lm.model.config, "_attn_implementation", "eager")
    swapped = implementation not in ("eager", "sdpa")
    if swapped:
        lm.model.set_attn_implementation("sdpa")
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if swapped:
            lm.model.set_attn_implementation(implementation)
