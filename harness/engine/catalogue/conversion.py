"""GGUF checkpoints dequantized once to float32 and cached as plain safetensors directories.

A conversion is keyed by the GGUF file's sha256 and built in a temporary directory beside
its target, renamed into place when complete: an interrupted one never looks finished to a
later load. Only a finished directory carries the :data:`MARKER` file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from harness.engine.catalogue.entries import cache_root, converted_dir
from harness.errors import PowersteerError
from harness.files import atomic_write_json

MARKER = "powersteer-source.json"
"""Written last into a converted directory: records where the weights came from."""

PARTIAL_PREFIX = ".partial-"
"""Names a conversion still being built: ``.partial-<sha256>-<pid>-<random>``."""

CHUNK_BYTES = 1 << 20
"""Files are read and copied in blocks of this many bytes."""


def is_complete(directory: Path) -> bool:
    """True for a finished conversion: only a finished one carries the marker file."""
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Hex sha256 of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    with (
        path.open("rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Dequantize a GGUF checkpoint once; return its cached safetensors directory.

    The directory is keyed by the file's sha256 (computed unless given): a second call
    with the same file returns at once. The conversion is built in a temporary directory
    beside the target and renamed into place when complete; leftovers of interrupted
    conversions are removed.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise PowersteerError(f"GGUF file {str(gguf_path)!r} does not exist")
    digest = (sha256 or sha256_file(gguf_path, progress=progress)).lower()
    target = converted_dir(digest)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(digest)
    partial = _new_partial_dir(digest, target.parent)
    try:
        _convert_into(gguf_path, partial, progress=progress)
        atomic_write_json(
            partial / MARKER,
            {"format": "gguf", "gguf_file": gguf_path.name, "sha256": digest},
        )
        _move_into_place(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _new_partial_dir(digest: str, parent: Path) -> Path:
    """An empty directory to build the conversion in, named so others can tell it is ours."""
    prefix = f"{PARTIAL_PREFIX}{digest}-{os.getpid()}-"
    partial = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    partial.chmod(0o755 & ~_umask())  # mkdtemp makes it private; the cache is not
    return partial


def _move_into_place(partial: Path, target: Path) -> None:
    """Rename the finished ``partial`` to ``target``; a finished rival there is kept."""
    if is_complete(target):  # a concurrent conversion finished first: keep it
        return
    if target.exists():  # something incomplete that no conversion would leave
        shutil.rmtree(target)
    try:
        os.rename(partial, target)
    except OSError:
        if not is_complete(target):  # a concurrent conversion won the rename: fine
            raise


def _convert_into(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    # Heavy, and only a conversion needs them: the catalogue itself stays free of torch.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _require_gguf_support()
    _check_readable_gguf(gguf_path)
    folder, filename = str(gguf_path.parent), gguf_path.name
    steps = tqdm(total=3, desc=f"convert {filename}", disable=not progress, leave=False)
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        steps.update()
        steps.set_postfix_str("dequantize")
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        )
        steps.update()
        # A model loaded from GGUF refuses save_pretrained; a fresh model built from its
        # config without the quantization entry, holding the same tensors, saves plainly.
        steps.set_postfix_str("save")
        settings = quantized.config.to_dict()
        settings.pop("quantization_config", None)
        config = AutoConfig.for_model(**settings)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        del quantized
        plain.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        steps.update()
    finally:
        steps.close()


GGUF_READ_ERRORS = (ValueError, IndexError, KeyError, OverflowError, struct.error)
"""What the GGUF reader raises on bytes that are not a whole GGUF file (a bad magic,
an empty file it cannot map, a header or tensor table running past the end)."""


def _check_readable_gguf(gguf_path: Path) -> None:
    """Refuse an empty, truncated or non-GGUF file with one clear error, before the
    conversion would fail somewhere inside the readers."""
    # gguf is optional (only GGUF files need it): imported here, after the check for it.
    from gguf import GGUFReader

    size = gguf_path.stat().st_size
    problem = "the file is empty" if size == 0 else None
    if problem is None:
        try:
            tensors = GGUFReader(gguf_path).tensors
            end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
        except GGUF_READ_ERRORS as error:
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        else:
            if end > size:
                problem = f"its tensors need {end} bytes, the file has {size}"
    if problem is not None:
        raise PowersteerError(
            f"{gguf_path} is not a readable GGUF file ({problem}); download it again (it may "
            "be truncated) or give another model"
        )


def _require_gguf_support() -> None:
    missing = []
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PowersteerError(
            f"reading GGUF files needs the {' and '.join(missing)} package(s); "
            f"install them with `pip install {' '.join(missing)}`"
        )


def _remove_stale_partials(digest: str) -> None:
    """Delete temporary directories of conversions of ``digest`` whose process is gone."""
    root = cache_root()
    for leftover in root.glob(f"{PARTIAL_PREFIX}{digest}-*"):
        pid_text = leftover.name[len(PARTIAL_PREFIX) + len(digest) + 1 :].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
