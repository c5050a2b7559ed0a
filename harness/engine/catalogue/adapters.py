"""Catalogue models made of a base model and a LoRA adapter, merged once and cached.

The adapter directory (``adapter_config.json`` and ``adapter_model.safetensors``, as
``peft`` saves them) ships with powersteer. Merging adds ``(alpha / r) * B @ A`` to each
adapted weight of the base checkpoint; the result is a plain safetensors directory keyed
by the adapter's sha256 and the base directory's name, built under a temporary name and
renamed into place when complete, like a converted GGUF (:mod:`.conversion`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.engine.catalogue.conversion import MARKER, PARTIAL_PREFIX, is_complete, sha256_file
from harness.engine.catalogue.entries import cache_root
from harness.errors import PowersteerError
from harness.files import atomic_write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHTS = "model.safetensors"

# peft's saved key for the A or B factor of one adapted linear layer:
# base_model.model.<module path>.lora_A.weight
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")


def merged_dir(base_dir: Path, adapter_dir: Path) -> Path:
    """Where the merge of ``adapter_dir`` into ``base_dir`` lives (complete or not)."""
    digest = sha256_file(adapter_dir / ADAPTER_WEIGHTS)[:16]
    return cache_root() / f"lora-{digest}-on-{base_dir.name}"


def merge_lora_weights(
    base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scaling: float
) -> dict[str, torch.Tensor]:
    """``base`` with ``scaling * B @ A`` added to each weight the adapter names.

    ``adapter`` holds peft's keys; each adapted ``W`` (out, in) gets ``B`` (out, r) times
    ``A`` (r, in), computed in float64 and cast back to ``W``'s dtype.
    """
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise PowersteerError(
                f"adapter key {key!r} is not a LoRA factor; only plain LoRA adapters "
                "(lora_A / lora_B weights, no biases or other modules) can be merged"
            )
        factors.setdefault(match["module"], {})[match["factor"]] = tensor
    merged = dict(base)
    for module, pair in factors.items():
        weight_key = f"{module}.weight"
        if weight_key not in base or set(pair) != {"A", "B"}:
            raise PowersteerError(
                f"adapter module {module!r} does not match the base weights (no "
                f"{weight_key} or a missing factor); retrain the adapter for this base model"
            )
        weight = base[weight_key]
        delta = scaling * (pair["B"].double() @ pair["A"].double())
        merged[weight_key] = (weight.double() + delta).to(weight.dtype).contiguous()
    return merged


def adapter_scaling(adapter_dir: Path) -> float:
    """``lora_alpha / r`` from ``adapter_config.json``; an error for options not merged here."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise PowersteerError(
            f"{adapter_dir / ADAPTER_CONFIG}: use_rslora / use_dora adapters are not "
            "supported; train a plain LoRA"
        )
    return float(config["lora_alpha"]) / float(config["r"])


def merge_adapter(base_dir: Path, adapter_dir: Path) -> Path:
    """Merge ``adapter_dir`` into the checkpoint in ``base_dir`` once; return the merge."""
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise PowersteerError(
            f"{adapter_dir}: no {ADAPTER_WEIGHTS}; reinstall powersteer or retrain the "
            "adapter (python -m harness.integrations.refusal_model.train)"
        )
    target = merged_dir(base_dir, adapter_dir)
    if is_complete(target):
        return target
    if not (base_dir / WEIGHTS).is_file():
        raise PowersteerError(f"{base_dir}: no {WEIGHTS} to merge the adapter into")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{target.name}-", dir=target.parent))
    try:
        for item in base_dir.iterdir():
            if item.is_file() and item.name not in (WEIGHTS, MARKER) and item.suffix != ".gguf":
                shutil.copy2(item, partial / item.name)
        merged = merge_lora_weights(
            load_file(base_dir / WEIGHTS),
            load_file(adapter_dir / ADAPTER_WEIGHTS),
            adapter_scaling(adapter_dir),
        )
        save_file(merged, partial / WEIGHTS, metadata={"format": "pt"})
        atomic_write_json(
            partial / MARKER,
            {"format": "lora-merge", "base": str(base_dir), "adapter": str(adapter_dir)},
        )
        if is_complete(target):  # another process finished first
            shutil.rmtree(partial)
        else:
            if target.exists():  # an incomplete leftover: never taken for complete
                shutil.rmtree(target)
            partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
