"""Layer specifications: an int (negative counts from the end) or a fraction of depth."""

from __future__ import annotations

from harness.errors import PowersteerError

LayerSpec = int | float | str


def resolve_layer(spec: LayerSpec, n_layers: int, *, name: str = "layer") -> int:
    """Turn a layer spec into a block index in ``0..n_layers-1``.

    ``7`` is block 7, ``-1`` the last block, ``0.25`` the block a quarter of the way
    down (``round(0.25 * (n_layers - 1))``). Strings are parsed the same way, so CLI flags
    and YAML values need no conversion first.
    """
    value = _parse(spec, name)
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise PowersteerError(
                f"{name}={spec!r} is a fraction of depth outside [0, 1]; "
                f"give a fraction such as 0.5 or a block index in 0..{n_layers - 1}"
            )
        return round(value * (n_layers - 1))
    index = value + n_layers if value < 0 else value
    if not 0 <= index < n_layers:
        raise PowersteerError(
            f"{name}={spec!r} is out of range for a model with {n_layers} blocks; "
            f"use a block index in {-n_layers}..{n_layers - 1} or a fraction such as 0.5"
        )
    return index


def resolve_layer_pair(source: LayerSpec, target: LayerSpec, n_layers: int) -> tuple[int, int]:
    """Resolve a (source, target) pair and check that the target lies after the source."""
    source_index = resolve_layer(source, n_layers, name="source")
    target_index = resolve_layer(target, n_layers, name="target")
    if target_index <= source_index:
        raise PowersteerError(
            f"target block {target_index} (from {target!r}) is not after source block "
            f"{source_index} (from {source!r}); steering only reaches later blocks, "
            "so choose target > source"
        )
    return source_index, target_index


def _parse(spec: LayerSpec, name: str) -> int | float:
    if isinstance(spec, bool):
        raise PowersteerError(f"{name}={spec!r} is a boolean; give a block index or a fraction")
    if isinstance(spec, int | float):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            pass
    raise PowersteerError(
        f"{name}={spec!r} is neither a block index (such as 7 or -2) nor a fraction of "
        "depth (such as 0.25)"
    )
