"""The plain-text anchor of the refusal adapter's training (refusal_model.train)."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model

from harness.integrations.refusal_model.train import encode_plain_text, plain_text_kl
from harness.testing.tiny_models import tiny_model

PASSAGES = ["Question: What is 2+2?\nAnswer: 4.", "Question: Name a colour.\nAnswer: Blue, or red."]


def _peft(lm):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(lm.model, config, autocast_adapter_dtype=False)


def test_the_anchor_is_zero_for_an_untrained_adapter():
    lm = tiny_model("llama", n_layers=2)
    batch = encode_plain_text(lm, PASSAGES)
    assert float(plain_text_kl(_peft(lm), batch).detach()) == 0.0  # peft starts lora_B at zero


def test_the_anchor_is_kl_from_the_base_model_over_real_positions_only():
    lm = tiny_model("llama", n_layers=2)
    base = copy.deepcopy(lm.model)
    model = _peft(lm)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    batch = encode_plain_text(lm, PASSAGES)
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # the shorter passage is padded, so masking is exercised
    with torch.no_grad():
        reference_base = base(**batch).logits.log_softmax(-1)
        tuned = model(**batch).logits.log_softmax(-1)
    kl = torch.nn.functional.kl_div(tuned, reference_base, log_target=True, reduction="none").sum(
        -1
    )
    expected = kl[mask].mean()
    got = plain_text_kl(model, batch)
    assert got.requires_grad  # the anchor trains the adapter
    torch.testing.assert_close(got.detach(), expected, rtol=1e-10, atol=1e-12)
    assert float(expected) > 1e-3
