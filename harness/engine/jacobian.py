"""The layer-to-layer Jacobian as an operator: ``J V`` and ``Jᵀ U`` without ever building ``J``.

For prompts ``X``, source block ``s`` and target block ``t > s``, the map is
``f(θ) = h_t(X; θ)`` where ``θ ∈ R^d`` is added to ``h_s`` at every position, and the output
stacks the target positions of every prompt (padding excluded): ``f: R^d → R^M`` with
``M = n_target_positions · d``. ``J = ∂f/∂θ`` at ``θ = 0`` has shape ``(M, d)``; given a
steered point ``θ₀`` (``at=``) it is taken at ``θ = θ₀`` instead. ``h_s`` and ``h_t`` are the
block outputs by default; a hook site (:mod:`harness.engine.sites`) makes either the output
of the block's attention or MLP sub-layer.

A block of ``k`` vectors rides along one pass: forward mode maps over the tangents and
reverse mode over the cotangents (``torch.func.vmap``), so the prompts run forward once
and only the block is carried ``k`` times. The double-VJP fallback repeats the prompts
``k`` times instead, row group ``j`` carrying vector ``j``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.engine.sites import Site, check_site, site_module
from harness.engine.steering import autodiff_attention, run_to_block, run_to_blocks
from harness.errors import PowersteerError

JvpMode = Literal["auto", "forward", "double_vjp"]


@dataclass
class PassCount:
    """Model sweeps actually run.

    ``sweeps`` counts each forward pass, tangent-carrying forward pass and backward pass
    over its batch as one, however many vectors ride along. ``prompt_sweeps`` weights each
    sweep by the copies of the prompt set it carried (rows / n_prompts), which is what
    the compute scales with.
    """

    sweeps: int = 0
    prompt_sweeps: float = 0.0

    def add(self, rows: int, n_prompts: int, sweeps: int = 1) -> None:
        self.sweeps += sweeps
        self.prompt_sweeps += sweeps * rows / n_prompts


class LayerJacobian:
    """Matrix-free Jacobian of block ``target``'s output w.r.t. a vector added at ``source``.

    Vectors are rows: :meth:`jvp` maps ``(k, d)`` to ``(k, M)`` and :meth:`vjp` maps
    ``(k, M)`` to ``(k, d)``. Results are float64 for a float64 model and float32
    otherwise, on the model's device.

    ``source_site`` and ``target_site`` (``"block"``, ``"attn"`` or ``"mlp"``) say where on
    the source block θ is added and where on the target block the output is read.
    ``at`` (``(d_model,)``, times ``at_scale``, raw units) is the steered point ``θ₀`` the
    Jacobian is linearised around, as in a CAA-linearised Power Steering run; both
    products are then taken at ``θ₀`` (the prompts steered by ``θ₀``), not at 0.
    """

    def __init__(
        self,
        lm: LanguageModel,
        prompts: Sequence[str] | PromptBatch,
        source: LayerSpec,
        target: LayerSpec,
        *,
        target_tokens: TargetTokens = None,
        jvp_mode: JvpMode = "auto",
        max_rows: int | None = None,
        source_site: Site = "block",
        target_site: Site = "block",
        at: torch.Tensor | None = None,
        at_scale: float = 1.0,
    ) -> None:
        self.lm = lm
        self.source, self.target = resolve_layer_pair(source, target, lm.n_layers)
        self.source_site = check_site(source_site, name="source_site")
        self.target_site = check_site(target_site, name="target_site")
        site_module(lm, self.source, self.source_site)  # an unknown layout fails here, not mid-run
        site_module(lm, self.target, self.target_site)
        self.at = None if at is None else steered_point(lm, at, at_scale)
        self.batch = (
            prompts
            if isinstance(prompts, PromptBatch)
            else encode_prompts(lm, prompts, target_tokens=target_tokens)
        )
        if jvp_mode not in ("auto", "forward", "double_vjp"):
            raise PowersteerError(f"jvp_mode={jvp_mode!r}; use 'auto', 'forward' or 'double_vjp'")
        self.jvp_mode: JvpMode = jvp_mode
        self.max_rows = max_rows
        self.dtype = lm.compute_dtype
        self.passes = PassCount()
        self._pullback: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    @property
    def n_prompts(self) -> int:
        return self.batch.n_prompts

    @property
    def shape(self) -> tuple[int, int]:
        """``(M, d)``: stacked target activations by source dimension."""
        d = self.lm.d_model
        return self.batch.n_target_positions * d, d

    def unsteered(self) -> torch.Tensor:
        """``f(0)``: the stacked target activations without steering (also when linearised
        at a steered point), shape ``(M,)``."""
        with torch.no_grad():
            hidden = run_to_block(self.lm, self.batch, self.target, target_site=self.target_site)
        self.passes.add(self.n_prompts, self.n_prompts)
        return self._select_targets(hidden, 1)[0].to(self.dtype)

    def jvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """``J v`` for each row ``v`` of ``vectors`` ``(k, d)``; returns ``(k, M)``."""
        self._check_width(vectors, self.lm.d_model, "jvp")
        return torch.cat([self._jvp_chunk(chunk) for chunk in self._chunks(vectors)])

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for each row ``u`` of ``cotangents`` ``(k, M)``; returns ``(k, d)``."""
        self._check_width(cotangents, self.shape[0], "vjp")
        if self._pullback is None:
            # The graph at θ₀ (0 unless given) is the same for every call: one forward pass
            # over the prompts, kept; each call is then a backward pass mapped over the
            # cotangents.
            self._pullback = vjp_pullback(
                self.lm,
                self.batch,
                [self.source],
                self.target,
                source_site=self.source_site,
                target_site=self.target_site,
                at=None if self.at is None else {self.source: self.at},
            )
            self.passes.add(self.n_prompts, self.n_prompts)
        pulled = []
        for chunk in self._chunks(cotangents):
            pulled.append(self._pullback(chunk)[0])
            self.passes.add(chunk.shape[0] * self.n_prompts, self.n_prompts)
        return torch.cat(pulled).to(self.dtype)

    # -- forward mode ---------------------------------------------------------------------

    def _jvp_chunk(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.jvp_mode != "double_vjp":
            try:
                return self._jvp_forward_mode(vectors)
            except (NotImplementedError, RuntimeError) as error:
                if self.jvp_mode == "forward" or not _lacks_forward_ad(error):
                    raise
                self.jvp_mode = "double_vjp"  # remember: this model has no forward-mode rule
        return self._jvp_double_vjp(vectors)

    def _jvp_forward_mode(self, vectors: torch.Tensor) -> torch.Tensor:
        images = jvp_at_targets(
            self.lm,
            self.batch,
            self.source,
            [self.target],
            vectors,
            source_site=self.source_site,
            target_site=self.target_site,
            at=self.at,
        )
        self.passes.add(vectors.shape[0] * self.n_prompts, self.n_prompts)
        return images[self.target].to(self.dtype)

    def _jvp_double_vjp(self, vectors: torch.Tensor) -> torch.Tensor:
        # J v = ∂/∂u ⟨Jᵀu, v⟩: a backward pass that builds a graph, then a second one.
        k = vectors.shape[0]
        with autodiff_attention(self.lm), torch.enable_grad():
            theta, outputs = self._forward_with_graph(k)
            probe = torch.zeros_like(outputs, requires_grad=True)
            (pullback,) = torch.autograd.grad(outputs, theta, probe, create_graph=True)
            (product,) = torch.autograd.grad(pullback, probe, self._rows_of(vectors))
        self.passes.add(k * self.n_prompts, self.n_prompts, sweeps=3)
        return product.to(self.dtype)

    def release(self) -> None:
        """Free the retained reverse-mode graph."""
        self._pullback = None

    # -- helpers --------------------------------------------------------------------------

    def _forward_with_graph(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = k * self.n_prompts
        point = _primal(self.lm, self.at)
        theta = point.expand(rows, 1, point.shape[0]).clone().requires_grad_(True)
        hidden = run_to_block(
            self.lm,
            self.batch.repeat(k),
            self.target,
            source=self.source,
            delta=theta,
            source_site=self.source_site,
            target_site=self.target_site,
        )
        return theta, self._select_targets(hidden, k)

    def _rows_of(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(k, d)`` vectors to ``(k · n_prompts, 1, d)`` per-row deltas, vector-major."""
        rows = vectors.to(self.lm.dtype).repeat_interleave(self.n_prompts, dim=0)
        return rows[:, None, :]

    def _select_targets(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        return stack_targets(hidden, self.batch, k)

    def _chunks(self, rows: torch.Tensor) -> list[torch.Tensor]:
        per_pass = vectors_per_pass(self.max_rows, self.n_prompts)
        return [rows] if per_pass is None else list(rows.split(per_pass))

    @staticmethod
    def _check_width(matrix: torch.Tensor, width: int, what: str) -> None:
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise PowersteerError(
                f"{what} takes a (k, {width}) matrix of row vectors, got {tuple(matrix.shape)}"
            )


def jvp_at_targets(
    lm: LanguageModel,
    batch: PromptBatch,
    source: int,
    targets: Sequence[int],
    vectors: torch.Tensor,
    *,
    source_site: Site = "block",
    target_site: Site = "block",
    at: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """``{t: J_{source→t} V}`` for every target from one forward-mode pass; each is ``(k, M_t)``.

    The pass maps over the tangents (``torch.func.vmap`` of ``torch.func.jvp``): the primal
    (θ = 0, or ``at`` when given; the same for every vector) runs once over the prompts and
    only the tangents carry the ``k`` vectors, about half the work of repeating the prompts
    ``k`` times with a dual tensor each. Raises where an op has no forward-mode rule.
    """
    ordered = sorted(set(targets))

    def at_targets(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _target_activations(lm, batch, ordered, {source: theta}, source_site, target_site)

    primal = _primal(lm, at)
    with torch.no_grad(), autodiff_attention(lm):
        images = torch.func.vmap(lambda v: torch.func.jvp(at_targets, (primal,), (v,))[1])(
            vectors.to(device=lm.device, dtype=lm.dtype)
        )
    return dict(zip(ordered, images, strict=True))


def vjp_pullback(
    lm: LanguageModel,
    batch: PromptBatch,
    sources: Sequence[int],
    target: int,
    *,
    source_site: Site = "block",
    target_site: Site = "block",
    at: Mapping[int, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One forward pass to block ``target`` with θ_s = 0 (or ``at[s]``) added at each
    source; returns ``pull(U)``, which maps cotangents ``(k, M)`` to ``J_{s→target}ᵀ U``
    ``(k, d)`` for each source, in the order given.

    ``pull`` is a backward pass mapped over the cotangents (``torch.func.vmap`` of the
    ``torch.func.vjp`` pullback), so the prompts run forward once, not ``k`` times, and the
    kept graph holds one copy of the prompts. It can be called again and again. θ is shared
    by the prompts, so each gradient sums over them.
    """

    def at_target(*thetas: torch.Tensor) -> torch.Tensor:
        by_source = dict(zip(sources, thetas, strict=True))
        (flat,) = _target_activations(lm, batch, [target], by_source, source_site, target_site)
        return flat

    primals = [_primal(lm, (at or {}).get(source)) for source in sources]
    with torch.enable_grad(), autodiff_attention(lm):
        _, pullback = torch.func.vjp(at_target, *primals)
    batched = torch.func.vmap(pullback)

    def pull(cotangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autodiff_attention(lm):
            return batched(cotangents.to(device=lm.device, dtype=lm.dtype))

    return pull


def vectors_per_pass(max_rows: int | None, n_prompts: int) -> int | None:
    """How many vectors of a block one pass may carry: ``max_rows`` rows, each vector taking
    one row per prompt (at least one vector); None when passes are not split."""
    return None if max_rows is None else max(1, max_rows // n_prompts)


def steered_point(lm: LanguageModel, at: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale · at`` as the ``(d_model,)`` primal point of a Jacobian, in the model's dtype
    and on its device; a wrong shape or a non-finite value is one clear error."""
    at = torch.as_tensor(at)
    if at.shape != (lm.d_model,):
        raise PowersteerError(
            f"at= must be one vector of shape ({lm.d_model},) (d_model), got {tuple(at.shape)}"
        )
    point = (scale * at.to(torch.float64)).to(device=lm.device, dtype=lm.dtype)
    if not bool(torch.isfinite(point).all()):
        raise PowersteerError("at= (times at_scale) contains NaN or infinity")
    return point


def _primal(lm: LanguageModel, at: torch.Tensor | None) -> torch.Tensor:
    """The point θ a Jacobian product is taken at: ``at``, or 0."""
    if at is None:
        return torch.zeros(lm.d_model, dtype=lm.dtype, device=lm.device)
    return at.to(device=lm.device, dtype=lm.dtype)


def _target_activations(
    lm: LanguageModel,
    batch: PromptBatch,
    targets: Sequence[int],
    thetas: dict[int, torch.Tensor],
    source_site: Site = "block",
    target_site: Site = "block",
) -> tuple[torch.Tensor, ...]:
    """``f(θ)`` of the module docstring for each target, flattened to ``(M,)``: each
    ``thetas[s]`` (``(d,)``, the same on every prompt) is added at source ``s``'s site."""
    n = batch.n_prompts
    deltas = {s: theta.expand(n, 1, theta.shape[-1]) for s, theta in thetas.items()}
    hidden = run_to_blocks(
        lm, batch, targets, deltas, source_site=source_site, target_site=target_site
    )
    return tuple(hidden[t][batch.target_mask].reshape(-1) for t in targets)


def stack_targets(hidden: torch.Tensor, batch: PromptBatch, k: int) -> torch.Tensor:
    """``(k · n_prompts, tokens, d)`` to ``(k, M)``: each copy's target positions, stacked."""
    grouped = hidden.reshape(k, batch.n_prompts, *hidden.shape[1:])
    return grouped[:, batch.target_mask].reshape(k, -1)


def _lacks_forward_ad(error: BaseException) -> bool:
    text = str(error).lower()
    return "forward ad" in text or "forward-mode" in text or "not implemented" in text
