"""Count the model sweeps that really run, by hooking a decoder block.

The methods report their cost as ``forward_passes`` from their own bookkeeping; a test
that restates that bookkeeping's formula cannot catch a pass the code runs but forgets to
count. :func:`count_passes` counts from the model instead: a forward hook on one block
counts every forward (and tangent-carrying forward) sweep through it, and an identity
autograd function wrapped around the block's output counts every backward sweep through
it, a second backward over a kept graph included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from harness.engine.models import LanguageModel


@dataclass
class CountedPasses:
    """Sweeps seen at the hooked block: ``forward`` and ``backward``, ``total`` of both."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


@contextmanager
def count_passes(lm: LanguageModel, block: int) -> Iterator[CountedPasses]:
    """Count the sweeps through decoder block ``block`` of ``lm`` inside the context.

    Hook the steering source block: every sweep a method runs passes through it (a forward
    pass reaches the source on its way to any later block, and a gradient with respect to
    the vector added there ends there). The block's output is unchanged (an identity with
    a forward-mode rule and a vmap rule, so ``torch.func`` transforms pass through it).
    """
    counted = CountedPasses()
    count_backward = _backward_counter(counted)

    def hook(module: torch.nn.Module, inputs: object, output: Any) -> Any:
        counted.forward += 1
        if isinstance(output, tuple):
            return (count_backward.apply(output[0]), *output[1:])
        return count_backward.apply(output)

    handle = lm.blocks[block].register_forward_hook(hook)
    try:
        yield counted
    finally:
        handle.remove()


def _backward_counter(counted: CountedPasses) -> type[torch.autograd.Function]:
    class CountBackward(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(hidden: torch.Tensor) -> torch.Tensor:
            return hidden.view_as(hidden)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
            pass

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            counted.backward += 1
            # Through itself again, so a backward pass over this backward's graph (the
            # double-VJP's second pass) is counted too.
            return CountBackward.apply(grad)

        @staticmethod
        def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
            return tangent.view_as(tangent)

    return CountBackward
