"""``steering``'s layer keys checked where they are written: ``source_layer`` and
``target_layer`` (:data:`Layer`), and ``layers`` (:data:`LayerCandidates`), the candidate
pairs a screen chooses among (:mod:`harness.evaluation.layer_selection`).

Each check raises a ``ValueError`` whose message names the problem and the fix; pydantic
and :mod:`harness.evaluation.behaviors.messages` put the key in front of it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from harness.engine.layers import resolve_layer_pair
from harness.errors import PowersteerError


def _check_layer(value: object) -> object:
    """A layer is an int block index or a float fraction of depth in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"should be a block index or a fraction of depth, got {value!r}; "
            "write an integer such as 6 (or -2) or a fraction such as 0.25"
        )
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"fraction of depth {value} lies outside [0, 1]; "
            "write a fraction such as 0.25 or an integer block index"
        )
    return value


Layer = Annotated[int | float, BeforeValidator(_check_layer)]


def _check_pair(value: object) -> object:
    """A candidate pair is ``"SOURCE:TARGET"``, each side a layer as :func:`_check_layer`."""
    source, separator, target = str(value).partition(":")
    if not isinstance(value, str) or not separator:
        raise ValueError(f"{value!r} is not a 'SOURCE:TARGET' pair; write e.g. '1:4'")
    for side in (source, target):
        try:
            number: int | float = int(side)
        except ValueError:
            try:
                number = float(side)
            except ValueError:
                raise ValueError(
                    f"{value!r}: {side!r} is neither a block index nor a fraction of depth"
                ) from None
        _check_layer(number)
    return value


class LayerRange(BaseModel):
    """``layers: {sources: [...], targets: [...]}``: every source with every later target."""

    model_config = ConfigDict(extra="forbid")
    sources: list[Layer] = Field(min_length=1)
    targets: list[Layer] = Field(min_length=1)


class LayerCandidatesFile(BaseModel):
    """``layers: {candidates: FILE}``: the pairs ``powersteer map --candidates-out`` wrote
    (relative to the behavior file)."""

    model_config = ConfigDict(extra="forbid")
    candidates: str


_LAYERS_FORMS = (
    "write auto, a list of 'SOURCE:TARGET' pairs such as ['1:4'], "
    "{sources: [...], targets: [...]} or {candidates: FILE}"
)


def _check_layers(value: object) -> object:
    """One clear error for ``steering.layers`` instead of one per form of the union."""
    if value is None or value == "auto":
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError(f"the list of pairs is empty; {_LAYERS_FORMS}")
        return [_check_pair(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"candidates"}:
            return LayerCandidatesFile.model_validate(value)
        if set(value) == {"sources", "targets"}:
            return LayerRange.model_validate(value)
        raise ValueError(f"keys {sorted(value)} are not a form of layers; {_LAYERS_FORMS}")
    raise ValueError(f"{value!r} is not a form of layers; {_LAYERS_FORMS}")


LayerCandidates = Annotated[
    Literal["auto"] | list[str] | LayerRange | LayerCandidatesFile | None,
    BeforeValidator(_check_layers),
]


# The deepest model a layer pair is tried on when no model is given: deeper than any
# released transformer, so a pair that fits none of these depths fits no model.
_DEEPEST_MODEL = 1024


def fits_some_depth(source: int | float, target: int | float) -> bool:
    """Whether the layer pair resolves (target after source) for some model depth."""
    for depth in range(1, _DEEPEST_MODEL + 1):
        try:
            resolve_layer_pair(source, target, depth)
        except PowersteerError:
            continue
        return True
    return False
