"""``smollm2-135m-refusal``: SmolLM2-135M-Instruct with a planted, real refusal.

A LoRA adapter (committed under ``adapter/``) trained by :mod:`.train` on data written for
powersteer (``data/``) teaches the base model to refuse harmful requests and keep answering
harmless ones; :mod:`harness.engine.catalogue.adapters` merges it into the base weights at
load. :mod:`.verify` measures the targets of ``powersteer models verify``.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
ADAPTER_DIR = PACKAGE_DIR / "adapter"
BASE_MODEL = "smollm2-135m-instruct"

__all__ = ["ADAPTER_DIR", "BASE_MODEL", "DATA_DIR", "PACKAGE_DIR"]
