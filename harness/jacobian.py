"""The layer-to-layer Jacobian as an operator: ``J V`` and ``Jᵀ U`` without ever building ``J``.

For prompts ``X``, source block ``s`` and target block ``t > s``, the map is
``f(θ) = h_t(X; θ)`` where ``θ ∈ R^d`` is added to ``h_s`` at every position, and the output
stacks the target positions of every prompt (padding excluded): ``f: R^d → R^M`` with
``M = n_target_positions · d``. ``J = ∂f/∂θ`` at ``θ = 0`` has shape ``(M, d)``.

A block of ``k`` vectors rides along the batch dimension: the prompts are repeated ``k``
times and row group ``j`` carries vector ``j``, so one pass serves the whole block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as forward_ad

from harness.errors import PowersteerError
from harness.layers import LayerSpec, resolve_layer_pair
from harness.models import LanguageModel
from harness.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.steering import autodiff_attention, run_to_block

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
    ) -> None:
        self.lm = lm
        self.source, self.target = resolve_layer_pair(source, target, lm.n_layers)
        self.batch = (
            prompts
            if isinstance(prompts, PromptBatch)
            else encode_prompts(lm, prompts, target_tokens=target_tokens)
        )
        if jvp_mode not in ("auto", "forward", "double_vjp"):
            raise PowersteerError(f"jvp_mode={jvp_mode!r}; use 'auto', 'forward' or 'double_vjp'")
        self.jvp_mode: JvpMode = jvp_mode
        self.max_rows = max_rows
        self.dtype = torch.float64 if lm.dtype == torch.float64 else torch.float32
        self.passes = PassCount()
        self._retained: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_prompts(self) -> int:
        return self.batch.n_prompts

    @property
    def shape(self) -> tuple[int, int]:
        """``(M, d)``: stacked target activations by source dimension."""
        d = self.lm.d_model
        return self.batch.n_target_positions * d, d

    def unsteered(self) -> torch.Tensor:
        """``f(0)``: the stacked target activations without steering, shape ``(M,)``."""
        with torch.no_grad():
            hidden = run_to_block(self.lm, self.batch, self.target)
        self.passes.add(self.n_prompts, self.n_prompts)
        return self._select_targets(hidden, 1)[0].to(self.dtype)

    def jvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """``J v`` for each row ``v`` of ``vectors`` ``(k, d)``; returns ``(k, M)``."""
        self._check_width(vectors, self.lm.d_model, "jvp")
        return torch.cat([self._jvp_chunk(chunk) for chunk in self._chunks(vectors)])

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for each row ``u`` of ``cotangents`` ``(k, M)``; returns ``(k, d)``."""
        self._check_width(cotangents, self.shape[0], "vjp")
        chunks = self._chunks(cotangents)
        if len(chunks) == 1:
            return self._vjp_retained(chunks[0])
        return torch.cat([self._vjp_fresh(chunk) for chunk in chunks])

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
        k = vectors.shape[0]
        tangent = self._rows_of(vectors)
        with torch.no_grad(), autodiff_attention(self.lm), forward_ad.dual_level():
            theta = forward_ad.make_dual(torch.zeros_like(tangent), tangent)
            hidden = run_to_block(
                self.lm, self.batch.repeat(k), self.target, source=self.source, delta=theta
            )
            hidden_tangent = forward_ad.unpack_dual(hidden).tangent
        self.passes.add(k * self.n_prompts, self.n_prompts)
        if hidden_tangent is None:  # target does not depend on the source at all
            return torch.zeros(k, self.shape[0], dtype=self.dtype, device=vectors.device)
        return self._select_targets(hidden_tangent, k).to(self.dtype)

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

    # -- reverse mode ---------------------------------------------------------------------

    def _vjp_retained(self, cotangents: torch.Tensor) -> torch.Tensor:
        # The graph at θ = 0 is the same for every call: build it once, backpropagate often.
        k = cotangents.shape[0]
        if self._retained is None or self._retained[0].shape[0] != k * self.n_prompts:
            with autodiff_attention(self.lm), torch.enable_grad():
                self._retained = self._forward_with_graph(k)
            self.passes.add(k * self.n_prompts, self.n_prompts)
        theta, outputs = self._retained
        with autodiff_attention(self.lm):
            (grad,) = torch.autograd.grad(
                outputs, theta, cotangents.to(outputs.dtype), retain_graph=True
            )
        self.passes.add(k * self.n_prompts, self.n_prompts)
        return self._sum_over_prompts(grad, k)

    def _vjp_fresh(self, cotangents: torch.Tensor) -> torch.Tensor:
        k = cotangents.shape[0]
        with autodiff_attention(self.lm), torch.enable_grad():
            theta, outputs = self._forward_with_graph(k)
            (grad,) = torch.autograd.grad(outputs, theta, cotangents.to(outputs.dtype))
        self.passes.add(k * self.n_prompts, self.n_prompts, sweeps=2)
        return self._sum_over_prompts(grad, k)

    def release(self) -> None:
        """Free the retained reverse-mode graph."""
        self._retained = None

    # -- helpers --------------------------------------------------------------------------

    def _forward_with_graph(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = k * self.n_prompts
        theta = torch.zeros(
            rows, 1, self.lm.d_model, dtype=self.lm.dtype, device=self.lm.device, requires_grad=True
        )
        hidden = run_to_block(
            self.lm, self.batch.repeat(k), self.target, source=self.source, delta=theta
        )
        return theta, self._select_targets(hidden, k)

    def _rows_of(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(k, d)`` vectors to ``(k · n_prompts, 1, d)`` per-row deltas, vector-major."""
        rows = vectors.to(self.lm.dtype).repeat_interleave(self.n_prompts, dim=0)
        return rows[:, None, :]

    def _select_targets(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        return stack_targets(hidden, self.batch, k)

    def _sum_over_prompts(self, grad: torch.Tensor, k: int) -> torch.Tensor:
        # θ is shared by all prompts, so its gradient sums the per-row gradients.
        return grad.reshape(k, self.n_prompts, -1).sum(dim=1).to(self.dtype)

    def _chunks(self, rows: torch.Tensor) -> list[torch.Tensor]:
        if self.max_rows is None:
            return [rows]
        per_chunk = max(1, self.max_rows // self.n_prompts)
        return list(rows.split(per_chunk))

    @staticmethod
    def _check_width(matrix: torch.Tensor, width: int, what: str) -> None:
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise PowersteerError(
                f"{what} takes a (k, {width}) matrix of row vectors, got {tuple(matrix.shape)}"
            )


def stack_targets(hidden: torch.Tensor, batch: PromptBatch, k: int) -> torch.Tensor:
    """``(k · n_prompts, tokens, d)`` to ``(k, M)``: each copy's target positions, stacked."""
    grouped = hidden.reshape(k, batch.n_prompts, *hidden.shape[1:])
    return grouped[:, batch.target_mask].reshape(k, -1)


def _lacks_forward_ad(error: BaseException) -> bool:
    text = str(error).lower()
    return "forward ad" in text or "forward-mode" in text or "not implemented" in text
