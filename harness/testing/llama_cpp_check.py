"""Next-token logits of llama.cpp with our exported control vector, beside powersteer's own
steering at the same block and length (benchmarks/bench_llama_cpp_export.py and its test).

Both sides run the same Q4 weights: llama.cpp the catalogue's raw GGUF, powersteer the same
file dequantized to float32. llama.cpp still computes in its own kernels (quantized dot
products, its own RMSNorm and RoPE), so the two differ a little even unsteered: that
difference, the *floor*, is the yardstick. The control vector goes in through llama.cpp's
own ``llama_apply_adapter_cvec``, the call its ``--control-vector`` loader makes, with the
buffer laid out as that loader lays out a file (``direction.N`` at offset ``(N-1)*n_embd``),
read from our GGUF with the ``gguf`` package, not our reader.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.engine.models import LanguageModel
from harness.engine.steering import steer

PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class Comparison:
    """Max absolute next-token logit differences for one block and sign."""

    block: int
    sign: int
    length: float
    unsteered: float  # llama.cpp vs powersteer, no vector: the floor
    steered: float  # both steered at ``block``
    wrong_block: float  # llama.cpp at ``block`` vs powersteer at ``block + 1``
    steering_effect: float  # powersteer steered vs unsteered: how far the vector moves it


def gguf_directions(path: Path) -> dict[int, np.ndarray]:
    """``{N: direction.N}`` of a control-vector GGUF, read with the ``gguf`` package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in reader.tensors}


class LlamaCpp:
    """A llama.cpp context on a GGUF file: next-token logits with or without a control vector."""

    def __init__(self, model_path: Path) -> None:
        import llama_cpp

        self.api = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=256, n_threads=2, verbose=False, logits_all=True
        )
        self.n_embd = self.llm.n_embd()
        n_layer = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
        self.n_layer = int(n_layer(self.llm.model))

    def set_control_vector(self, directions: dict[int, np.ndarray] | None) -> None:
        apply = getattr(self.api, "llama_apply_adapter_cvec", None)
        apply = apply or self.api.llama_control_vector_apply  # its name before 0.3.6
        if directions is None:
            apply(self.llm.ctx, None, 0, self.n_embd, 0, 0)
            return
        top = max(directions)
        buffer = np.zeros(top * self.n_embd, dtype=np.float32)
        for block, values in directions.items():
            buffer[(block - 1) * self.n_embd : block * self.n_embd] += values
        data = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        code = apply(self.llm.ctx, data, buffer.size, self.n_embd, 1, self.n_layer - 1)
        if code != 0:
            raise RuntimeError(f"llama.cpp refused the control vector (code {code})")

    def next_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()  # eval drops the cache past n_tokens, so this starts afresh
        self.llm.eval(ids)
        return np.array(self.llm.scores[len(ids) - 1], dtype=np.float64)


def powersteer_logits(lm: LanguageModel, ids: list[int], vector=None, block=0, length=0.0):
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        if vector is None:
            return lm.model(input_ids=input_ids).logits[0, -1].double().numpy()
        with steer(lm, vector, block, length):
            return lm.model(input_ids=input_ids).logits[0, -1].double().numpy()


def compare(lm: LanguageModel, llama: LlamaCpp, gguf_file: Path, block: int, sign: int,
            length: float) -> Comparison:  # fmt: skip
    """Read our exported file ``gguf_file`` (one direction at ``block``) and compare."""
    ids = lm.tokenizer(PROMPT)["input_ids"]
    directions = gguf_directions(gguf_file)
    assert list(directions) == [block], directions
    vector = torch.from_numpy(directions[block]).float()
    unit = vector / vector.norm()
    llama.set_control_vector(None)
    base_llama = llama.next_logits(ids)
    base_ours = powersteer_logits(lm, ids)
    llama.set_control_vector(directions)
    steered_llama = llama.next_logits(ids)
    llama.set_control_vector(None)
    ours = powersteer_logits(lm, ids, unit, block, float(vector.norm()))
    wrong = powersteer_logits(lm, ids, unit, block + 1, float(vector.norm()))
    return Comparison(
        block=block, sign=sign, length=length,
        unsteered=float(np.abs(base_llama - base_ours).max()),
        steered=float(np.abs(steered_llama - ours).max()),
        wrong_block=float(np.abs(steered_llama - wrong).max()),
        steering_effect=float(np.abs(ours - base_ours).max()),
    )  # fmt: skip
