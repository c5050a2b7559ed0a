"""Safetensors files the harness writes and trusts only after checking.

Every file goes through :func:`write_checked`: written atomically (:mod:`harness.files`)
with a sha256 of its tensors in the header, so :func:`read_checked` can tell a file that
was changed or damaged after it was written from one that is whole. Reading never raises a
library error: a missing, truncated or foreign file is one :class:`PowersteerError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from harness.errors import PowersteerError
from harness.files import atomic_write

CHECKSUM_KEY = "powersteer_sha256"


class DamagedFile(PowersteerError):
    """A file that exists but cannot be trusted: unreadable, or its checksum differs."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_checked(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and string ``metadata`` atomically, with their checksum."""
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    header = {**metadata, CHECKSUM_KEY: tensors_sha256(contiguous)}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda temporary: save_file(contiguous, str(temporary), header))


def read_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of ``path``, verified against the written checksum.

    Files from before checksums were written (no checksum key) are read unverified.
    Raises :class:`DamagedFile` for a file that does not parse or fails its checksum.
    """
    if not path.is_file():
        raise PowersteerError(f"{path} does not exist; check the path")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DamagedFile(
            f"{path} is not a readable safetensors file ({_first_line(error)}); "
            "delete it and run the command that wrote it again"
        ) from None
    expected = header.get(CHECKSUM_KEY)
    if expected is not None and tensors_sha256(tensors) != expected:
        raise DamagedFile(
            f"{path}: its tensors do not match the checksum written with them (changed or "
            "damaged after writing); delete it and run the command that wrote it again"
        )
    return tensors, header


def read_header(path: Path) -> dict[str, str]:
    """The string metadata of ``path`` alone (no tensors read, no checksum verified)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DamagedFile(
            f"{path} is not a readable safetensors file ({_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
