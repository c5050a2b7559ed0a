"""Merging a LoRA adapter into its base checkpoint (harness.engine.catalogue.adapters).

The reference is peft's own ``merge_and_unload``. Both merges are float64 here; they differ
only in the order of a rank-4 sum, of order 1e-15 relative, so 1e-10 is far above rounding
and far below any wrong key, factor order or scaling (of order 1).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from harness.engine.catalogue import adapters, fetching
from harness.engine.catalogue import entries as entries_module
from harness.engine.catalogue.conversion import MARKER
from harness.engine.catalogue.entries import CatalogueEntry, converted_dir
from harness.engine.models import load_model
from harness.errors import PowersteerError
from harness.testing.tiny_models import tiny_model

TOLERANCE = 1e-10


@pytest.fixture()
def base_and_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERSTEER_CACHE", str(tmp_path / "cache"))
    lm = tiny_model("llama", n_layers=3)
    base_dir = tmp_path / "base"
    lm.model.save_pretrained(base_dir, safe_serialization=True)
    lm.tokenizer.save_pretrained(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1, 2],
        lora_dropout=0.0,
    )
    # autocast_adapter_dtype=False keeps the factors in float64 (peft casts them to float32
    # by default), so the reference is as exact as the merge.
    peft_model = get_peft_model(lm.model, config, autocast_adapter_dtype=False)
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at zero, which would make any merge look right
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, peft_model


def test_merged_checkpoint_equals_peft_merge(base_and_adapter):
    base_dir, adapter_dir, peft_model = base_and_adapter
    merged_dir = adapters.merge_adapter(base_dir, adapter_dir)
    got = load_file(merged_dir / "model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    expected = peft_model.merge_and_unload().state_dict()
    changed = [key for key in got if not torch.equal(got[key], base[key])]
    assert sorted(changed) == sorted(
        f"model.layers.{layer}.self_attn.{name}.weight"
        for layer in (1, 2)
        for name in ("q_proj", "v_proj")
    )
    for key, tensor in got.items():
        assert (tensor - expected[key]).abs().max() < TOLERANCE, key
    assert (merged_dir / MARKER).is_file()
    assert adapters.merge_adapter(base_dir, adapter_dir) == merged_dir  # cached


def test_incomplete_merge_directory_is_rebuilt(base_and_adapter):
    base_dir, adapter_dir, _ = base_and_adapter
    target = adapters.merged_dir(base_dir, adapter_dir)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a leftover without the marker
    merged_dir = adapters.merge_adapter(base_dir, adapter_dir)
    assert merged_dir == target
    assert (target / "model.safetensors").is_file() and (target / MARKER).is_file()


def test_adapter_with_non_lora_keys_is_refused(base_and_adapter, tmp_path):
    base_dir, adapter_dir, _ = base_and_adapter
    weights = load_file(adapter_dir / adapters.ADAPTER_WEIGHTS)
    weights["base_model.model.lm_head.weight"] = torch.zeros(2, 2)
    save_file(weights, adapter_dir / adapters.ADAPTER_WEIGHTS)
    with pytest.raises(PowersteerError, match="not a LoRA factor"):
        adapters.merge_adapter(base_dir, adapter_dir)


def test_catalogue_entry_with_an_adapter_is_merged_on_fetch(base_and_adapter, monkeypatch):
    base_dir, adapter_dir, _ = base_and_adapter
    # A base entry whose converted copy is already in the cache: the fake sha256 names it.
    digest = "0" * 64
    cached_base = converted_dir(digest)
    shutil.copytree(base_dir, cached_base)
    (cached_base / MARKER).write_text("{}")
    entries = {
        "tiny-base": CatalogueEntry("tiny-base", "llama", "", "", gguf_name="x.gguf",
                                    gguf_sha256=digest),
        "tiny-tuned": CatalogueEntry("tiny-tuned", "llama", "", "", base_model="tiny-base",
                                     adapter_dir=adapter_dir),
    }  # fmt: skip
    monkeypatch.setattr(entries_module, "CATALOGUE", entries)
    monkeypatch.setattr(fetching, "CATALOGUE", entries)
    assert fetching.cached_path("tiny-tuned") is None
    merged = fetching.fetch("tiny-tuned", progress=False)
    assert merged == adapters.merged_dir(cached_base, adapter_dir)
    assert fetching.cached_path("tiny-tuned") == merged
    assert load_model("tiny-tuned").model.config.model_type == "llama"
