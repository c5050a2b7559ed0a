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


# ``auto`` on a model this shallow screens every pair; deeper models get a grid of sources
# and, after each, targets (an L-block model has L(L-1)/2 pairs: 435 for 30 blocks).
AUTO_ALL_PAIRS_UP_TO = 9
AUTO_SOURCES = 6
AUTO_TARGETS_PER_SOURCE = 3


def auto_candidates(n_layers: int) -> list[tuple[int, int]]:
    """The pairs ``layers: auto`` screens: every pair on a model of at most
    :data:`AUTO_ALL_PAIRS_UP_TO` blocks; otherwise :data:`AUTO_SOURCES` sources spread over
    the first three quarters of depth, each with :data:`AUTO_TARGETS_PER_SOURCE` targets
    spread between it and the last block."""
    if n_layers < 2:
        raise PowersteerError(f"a model with {n_layers} block has no layer pair to steer")
    if n_layers <= AUTO_ALL_PAIRS_UP_TO:
        return [(s, t) for s in range(n_layers) for t in range(s + 1, n_layers)]
    last_source = round(0.75 * (n_layers - 1))
    sources = sorted({round(i * last_source / (AUTO_SOURCES - 1)) for i in range(AUTO_SOURCES)})
    pairs = set()
    for source in sources:
        room = n_layers - 1 - source
        for j in range(1, AUTO_TARGETS_PER_SOURCE + 1):
            pairs.add((source, source + max(1, round(j * room / AUTO_TARGETS_PER_SOURCE))))
    return sorted(pairs)


def resolve_candidates(
    spec: str | list[str] | dict[str, list[LayerSpec]], n_layers: int
) -> list[tuple[int, int]]:
    """The candidate (source, target) pairs of a ``steering.layers`` value, sorted, unique.

    ``"auto"`` (:func:`auto_candidates`); a list of ``"SOURCE:TARGET"`` strings (each side
    a block index or a fraction, as :func:`resolve_layer`); or ``{"sources": [...],
    "targets": [...]}``, every source with every later target.
    """
    if spec == "auto":
        return auto_candidates(n_layers)
    if isinstance(spec, dict):
        sources = {resolve_layer(s, n_layers, name="sources") for s in spec["sources"]}
        targets = {resolve_layer(t, n_layers, name="targets") for t in spec["targets"]}
        pairs = sorted((s, t) for s in sources for t in targets if t > s)
        if not pairs:
            raise PowersteerError(
                f"no target in {sorted(targets)} lies after a source in {sorted(sources)}; "
                "give targets deeper than the sources"
            )
        return pairs
    if isinstance(spec, list):
        pairs = set()
        for item in spec:
            source, separator, target = str(item).partition(":")
            if not separator:
                raise PowersteerError(
                    f"layer pair {item!r} is not SOURCE:TARGET; write e.g. '2:5' or '0.25:0.75'"
                )
            pairs.add(resolve_layer_pair(source, target, n_layers))
        return sorted(pairs)
    raise PowersteerError(
        f"layers={spec!r}: give auto, a list of 'SOURCE:TARGET' pairs, or sources:/targets:"
    )
