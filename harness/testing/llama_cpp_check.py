"""Next-token logits of llama.cpp with our exported control vector, beside powersteer's own
steering at the same block and length (benchmarks/bench_llama_cpp_export.py and its test).

llama.cpp here is the prebuilt CPU library inside the ``llama-cpp-cffi`` wheel, driven
through its cffi C API (``llama_model_load_from_file``, ``llama_decode``,
``llama_get_logits_ith``, ``llama_apply_adapter_cvec``). We load that extension module by
itself: the wheel's ``llama`` package, imported whole, pulls in its own chat formatter and
hub client, none of which this check needs.

Both sides run the same Q4 weights: llama.cpp the catalogue's raw GGUF, powersteer the same
file dequantized to float32. llama.cpp still computes in its own kernels (quantized dot
products, its own RMSNorm and RoPE), so the two differ a little even unsteered: that
difference, the *floor*, is the yardstick.

The control vector goes in through ``llama_apply_adapter_cvec``, the call llama.cpp's
``--control-vector`` loader makes, with the buffer laid out as that loader lays out a file
(``common_control_vector_load_one`` in ``common/common.cpp``): tensor ``direction.N`` is
added (times the strength, 1 here) at float offset ``(N-1)*n_embd``, since no row is kept
for layer 0, and the loader applies layers ``1..n_layer``. ``llama_adapter_cvec::apply``
(``src/llama-adapter.cpp``) copies row ``il-1`` into ``tensors[il]`` for ``il`` in
``1..n_layer-1``, and the graph adds ``tensors[il]`` to block ``il``'s output after its last
residual add (``build_cvec``). The file is read with the ``gguf`` package, not our reader,
and powersteer's side steers with the vector we exported from, not with the file, so a
wrong block, sign or length in the exporter shows up as a difference.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import importlib.util
import shutil
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from harness.engine.models import LanguageModel
from harness.engine.prompts import encode_prompts
from harness.engine.steering import scale_unit, steer
from harness.errors import PowersteerError

PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
LIBRARY_DISTRIBUTION = "llama-cpp-cffi"
LIBRARY_PACKAGE = "llama"  # the import name of llama-cpp-cffi
CPU_EXTENSION = "_llama_cpp_cpu"

# The wheel's library was linked against GCC 14's libstdc++ and asks for two unversioned
# symbols that GCC 12's (Debian 12) lacks: the hook GCC 13+ headers call to set up the
# standard streams, and the handler GCC 14 calls when an exception leaves a noexcept
# function. Every versioned symbol it needs is in GCC 12's library, so defining these two
# is enough; including <iostream> here sets the streams up the GCC 12 way.
_LIBSTDCXX_BRIDGE = r"""
#include <exception>
#include <iostream>
extern "C" void __cxa_call_terminate(void *) noexcept { std::terminate(); }
namespace std { void ios_base_library_init() {} }
"""
_MISSING_WITH_OLD_LIBSTDCXX = ("__cxa_call_terminate", "ios_base_library_init")


@dataclass(frozen=True)
class Comparison:
    """Max absolute next-token logit differences for one block and sign."""

    block: int
    sign: int
    length: float
    unsteered: float  # llama.cpp vs powersteer, no vector: the floor
    steered: float  # llama.cpp with our file vs powersteer steering block ``block``
    wrong_block: float  # llama.cpp with our file vs powersteer steering block ``block + 1``
    steering_effect: float  # powersteer steered vs unsteered: how far the vector moves it
    # powersteer at 1.01 * length vs at length: how much a small change in the residual
    # stream moves the steered logits, so how far kernel differences can be amplified
    one_percent_longer: float
    # llama.cpp with the file's vector times 1 + 1e-6 vs as stored: its own jitter here (its
    # 8-bit rounding of activations turns a change in the seventh digit into a visible one)
    llama_jitter: float


def gguf_directions(path: Path) -> dict[int, np.ndarray]:
    """``{N: direction.N}`` of a control-vector GGUF, read with the ``gguf`` package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in reader.tensors}


def extension_path() -> Path:
    """The wheel's CPU library module, found without running the ``llama`` package's
    ``__init__``; ``ImportError`` (so tests skip) when the wheel is not installed."""
    package = importlib.util.find_spec(LIBRARY_PACKAGE)
    locations = list(package.submodule_search_locations or []) if package else []
    candidates = sorted(p for d in locations for p in Path(d).glob(f"{CPU_EXTENSION}.*.so"))
    if not candidates:
        raise ImportError(
            f"{LIBRARY_DISTRIBUTION} is not installed (no {LIBRARY_PACKAGE}/{CPU_EXTENSION}"
            f"*.so): pip install --no-deps {LIBRARY_DISTRIBUTION}==0.4.42"
        )
    return candidates[0]


@functools.cache  # one module per process: a loaded C library cannot be unloaded anyway
def load_library() -> ModuleType:
    """llama-cpp-cffi's CPU extension module (``.ffi``, ``.lib``), loaded on its own.

    Raises ``ImportError`` when the wheel is not installed, :class:`PowersteerError` when
    it is but cannot be loaded here.
    """
    path = extension_path()
    try:
        return _load_extension(path)
    except ImportError as error:
        if not any(symbol in str(error) for symbol in _MISSING_WITH_OLD_LIBSTDCXX):
            raise PowersteerError(f"{path}: llama.cpp's library does not load: {error}") from error
    _load_libstdcxx_bridge()
    return _load_extension(path)


def _load_extension(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(CPU_EXTENSION, str(path))
    spec = importlib.util.spec_from_file_location(CPU_EXTENSION, path, loader=loader)
    assert spec is not None  # a loader was given, so a spec always comes back
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _load_libstdcxx_bridge() -> None:
    """Compile and load, process-wide, the two symbols an older libstdc++ lacks."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise PowersteerError(
            f"{LIBRARY_DISTRIBUTION}'s llama.cpp needs GCC 14's libstdc++ or a C++ compiler "
            "to bridge an older one; install g++ (apt-get install g++)"
        )
    with tempfile.TemporaryDirectory() as scratch:
        source, shared = Path(scratch, "bridge.cpp"), Path(scratch, "bridge.so")
        source.write_text(_LIBSTDCXX_BRIDGE, encoding="utf-8")
        build = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(shared), str(source)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            raise PowersteerError(
                f"{compiler} could not build the libstdc++ bridge: {build.stderr}"
            )
        # Global, so the extension's unresolved symbols bind to it when it loads next.
        ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)


class LlamaCpp:
    """A llama.cpp model and context on a GGUF file: next-token logits with or without a
    control vector. Use as a context manager, or call :meth:`close`."""

    def __init__(self, model_path: Path, *, threads: int = 2, context_length: int = 256) -> None:
        module = load_library()
        self.ffi, self.lib = module.ffi, module.lib
        self.log: deque[str] = deque(maxlen=20)
        self._keep_logger = self._install_logger()
        model_params = self.lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = self.lib.llama_model_load_from_file(str(model_path).encode(), model_params)
        if self.model == self.ffi.NULL:
            raise PowersteerError(f"{model_path}: llama.cpp cannot load it ({self._last_log()})")
        context_params = self.lib.llama_context_default_params()
        context_params.n_ctx = context_params.n_batch = context_length
        context_params.n_threads = context_params.n_threads_batch = threads
        self.context = self.lib.llama_init_from_model(self.model, context_params)
        if self.context == self.ffi.NULL:
            self.lib.llama_model_free(self.model)
            raise PowersteerError(f"{model_path}: llama.cpp made no context ({self._last_log()})")
        self.context_length = context_length
        self.n_embd = int(self.lib.llama_model_n_embd(self.model))
        self.n_layer = int(self.lib.llama_model_n_layer(self.model))
        vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(vocab))

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.context is not None:
            self.lib.llama_free(self.context)
            self.lib.llama_model_free(self.model)
            self.context = self.model = None

    def set_control_vector(self, directions: dict[int, np.ndarray] | None) -> None:
        """Steer by ``{N: direction.N}`` (``(n_embd,)`` each) as ``--control-vector`` does
        with a file holding them, or stop steering with ``None``."""
        if directions is None:
            self.lib.llama_apply_adapter_cvec(self.context, self.ffi.NULL, 0, self.n_embd, -1, -1)
            return
        bad = [n for n in directions if not 1 <= n < self.n_layer]
        if bad:
            raise PowersteerError(
                f"direction.{bad[0]} is outside llama.cpp's steerable layers 1..{self.n_layer - 1}"
            )
        # The loader's buffer ends at its highest direction; llama.cpp leaves a layer past
        # the buffer's end as it was, so on a reused context we always pass every layer
        # (zeros where the file has none, as a fresh context starts).
        buffer = np.zeros((self.n_layer - 1) * self.n_embd, dtype=np.float32)
        for layer, values in directions.items():
            buffer[(layer - 1) * self.n_embd : layer * self.n_embd] += values
        data = self.ffi.cast("float *", self.ffi.from_buffer(buffer))
        code = self.lib.llama_apply_adapter_cvec(
            self.context, data, buffer.size, self.n_embd, 1, self.n_layer
        )
        if code != 0:
            raise PowersteerError(
                f"llama.cpp refused the control vector (code {code}: {self._last_log()})"
            )

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """``(n_vocab,)`` float64 logits after the prompt ``ids``, decoded from an empty cache."""
        if not 0 < len(ids) <= self.context_length:
            raise PowersteerError(f"{len(ids)} tokens do not fit a {self.context_length} context")
        self.lib.llama_kv_self_clear(self.context)
        tokens = self.ffi.new("int32_t[]", ids)
        code = self.lib.llama_decode(self.context, self.lib.llama_batch_get_one(tokens, len(ids)))
        if code != 0:
            raise PowersteerError(f"llama_decode failed (code {code}: {self._last_log()})")
        logits = self.lib.llama_get_logits_ith(self.context, -1)
        values = np.frombuffer(self.ffi.buffer(logits, 4 * self.n_vocab), dtype=np.float32)
        return values.astype(np.float64)

    def _install_logger(self) -> Any:
        """Keep llama.cpp's log lines for error messages instead of printing them."""

        def keep(level: int, text: Any, user_data: Any) -> None:
            self.log.append(self.ffi.string(text).decode("utf-8", "replace").strip())

        callback = self.ffi.callback("ggml_log_callback", keep)
        self.lib.llama_log_set(callback, self.ffi.NULL)
        return callback  # cffi frees the callback with this object, so we hold it

    def _last_log(self) -> str:
        return " / ".join(line for line in list(self.log)[-3:] if line) or "no log"


def prompt_scale_unit(lm: LanguageModel, block: int) -> float:
    """Powersteer's scale unit at ``block`` on :data:`PROMPT`: the median residual norm."""
    return scale_unit(lm, encode_prompts(lm, [PROMPT]), block)


def powersteer_logits(
    lm: LanguageModel,
    ids: list[int],
    vector: torch.Tensor | None = None,
    block: int = 0,
    length: float = 0.0,
) -> np.ndarray:
    """``(vocab,)`` float64 next-token logits, steered by ``length * vector`` at ``block``
    when a ``(d_model,)`` unit ``vector`` is given."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        if vector is None:
            return lm.model(input_ids=input_ids).logits[0, -1].double().numpy()
        with steer(lm, vector, block, length):
            return lm.model(input_ids=input_ids).logits[0, -1].double().numpy()


def compare(
    lm: LanguageModel,
    llama: LlamaCpp,
    exported: Path,
    direction: torch.Tensor,
    block: int,
    sign: int,
    length: float,
) -> Comparison:
    """llama.cpp steered by the file ``exported`` beside powersteer adding
    ``sign * length * direction`` (``direction`` the ``(d_model,)`` unit vector the file
    was exported from) to block ``block``'s output."""
    ids = lm.tokenizer(PROMPT)["input_ids"]
    vector = sign * direction.float() / direction.float().norm()
    llama.set_control_vector(None)
    base_llama = llama.next_logits(ids)
    directions = gguf_directions(exported)
    llama.set_control_vector(directions)
    steered_llama = llama.next_logits(ids)
    llama.set_control_vector({n: values * (1 + 1e-6) for n, values in directions.items()})
    jittered_llama = llama.next_logits(ids)
    llama.set_control_vector(None)
    base_ours = powersteer_logits(lm, ids)
    ours = powersteer_logits(lm, ids, vector, block, length)
    wrong = powersteer_logits(lm, ids, vector, block + 1, length)
    longer = powersteer_logits(lm, ids, vector, block, 1.01 * length)
    return Comparison(
        block=block,
        sign=sign,
        length=length,
        unsteered=float(np.abs(base_llama - base_ours).max()),
        steered=float(np.abs(steered_llama - ours).max()),
        wrong_block=float(np.abs(steered_llama - wrong).max()),
        steering_effect=float(np.abs(ours - base_ours).max()),
        one_percent_longer=float(np.abs(longer - ours).max()),
        llama_jitter=float(np.abs(jittered_llama - steered_llama).max()),
    )
