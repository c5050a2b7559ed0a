"""Who evaluates a sweep's cell batches: this process, or workers elsewhere (Ray).

The sweep cuts its uncached cells into batches (method x vector batch, ``batch_rows``
prompts each) and hands them to an :class:`Executor`, which yields each batch's payloads as
they finish, in any order. The driver writes them to the run's cache (unless the executor's
workers already did, ``writes_cache``), so a restarted driver reuses every finished batch
whoever computed it. Payloads depend only on the batch (generation is seeded per batch
from the behavior's split seed), never on the worker that ran it.

Workers never receive weights: a :class:`ModelSpec` says how to load the model by name or
path, and each worker checks that what it loaded has the driver's fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import PowersteerError

if TYPE_CHECKING:
    from harness.evaluation.cell_runner import CellRunner
    from harness.evaluation.cells import Cell

Batch = list[tuple["Cell", str]]  # (cell, cache key) pairs evaluated together


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the run's model: the arguments of :func:`load_model`."""

    name_or_path: str
    dtype: str = "float32"
    device: str = "cpu"

    def load(self) -> Any:
        from harness.engine.models import load_model

        return load_model(self.name_or_path, dtype=self.dtype, device=self.device)


class Executor(Protocol):
    """Evaluates cell batches; see the module docstring."""

    #: True when the workers write payloads into the shared cache themselves.
    writes_cache: bool

    def evaluate(
        self, runner: CellRunner, split: str, batches: Sequence[Batch]
    ) -> Iterator[tuple[Batch, list[dict[str, Any]]]]:
        """Yield ``(batch, payloads)`` for every batch, one payload per cell, as they finish."""
        ...


class LocalExecutor:
    """Evaluates batches one after another in this process, on the driver's model."""

    writes_cache = False

    def evaluate(
        self, runner: CellRunner, split: str, batches: Sequence[Batch]
    ) -> Iterator[tuple[Batch, list[dict[str, Any]]]]:
        for batch in batches:
            yield batch, list(runner._evaluate(batch, split))


def require_model_spec(model: object, spec: ModelSpec | None) -> ModelSpec:
    """The spec remote workers load; a model passed as an object needs one given."""
    if spec is not None:
        return spec
    if isinstance(model, str):
        return ModelSpec(model)
    raise PowersteerError(
        "a remote executor loads the model on each worker by name or path; pass the model "
        "as a name (model='organism') or give model_spec=ModelSpec(...)"
    )
