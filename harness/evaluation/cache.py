"""The run's content-addressed cache: what a restarted run reuses.

Every cell (one steering delta on one split's prompts) and every method's vectors are
stored under a sha256 of everything that determines them (:func:`content_key`), so an
interrupted run resumes where it stopped and a changed generation scorer reuses every
generation. Writes are atomic (:mod:`harness.files`), and nothing read back is trusted
unchecked: a cell carries a sha256 of its payload and is checked for the shape the sweep
needs; one that fails is discarded with one warning line and computed again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.engine.methods import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.vectors_io import load_vectors, save_vectors
from harness.errors import PowersteerError, PowersteerWarning
from harness.files import atomic_write_json

CACHE_VERSION = 3  # bump when a cell's content would change for the same key (2: checksums;
# 3: the random control's own seed stream)
# A cell's lists, one entry per prompt; logit_scores may instead be null.
CELL_LISTS = ("completions", "loglik", "repetition", "logit_scores")


class ResultCache:
    """Content-addressed JSON cells and vector files under ``root``; writes are atomic."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def get_cell(self, key: str, n_prompts: int) -> dict[str, Any] | None:
        """The cell stored under ``key`` if it is whole and holds ``n_prompts`` entries;
        None when there is none or it is damaged (then with a warning)."""
        path = self._path("cells", key, ".json")
        if not path.is_file():
            return None
        problem, payload = _read_cell(path, n_prompts)
        if problem is not None:
            warnings.warn(
                f"{path}: discarded a damaged cache cell ({problem}); computing it again",
                PowersteerWarning,
                stacklevel=2,
            )
            return None
        return payload

    def put_cell(self, key: str, payload: dict[str, Any]) -> None:
        path = self._path("cells", key, ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            path, {"sha256": payload_sha256(payload), "payload": payload}, indent=None
        )

    def get_judgement(self, key: str) -> str | None:
        """A judge's raw verdict stored under ``key`` (None when there is none)."""
        path = self._path("judgements", key, ".json")
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # absent or torn: judged again, which is exact (greedy decoding)
        verdict = stored.get("verdict") if isinstance(stored, dict) else None
        return verdict if isinstance(verdict, str) else None

    def put_judgement(self, key: str, verdict: str) -> None:
        path = self._path("judgements", key, ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"verdict": verdict}, indent=None)

    def get_vectors(self, key: str) -> SteeringVectors | None:
        """The vectors stored under ``key``; None when there are none or the file fails its
        checks (checksum, finite unit rows), then with a warning."""
        path = self._path("vectors", key, ".safetensors")
        if not path.is_file():
            return None
        try:
            return load_vectors(path)[0]
        except PowersteerError as error:
            warnings.warn(
                f"discarded cached vectors ({error}); computing them again",
                PowersteerWarning,
                stacklevel=2,
            )
            return None

    def put_vectors(self, key: str, result: SteeringVectors) -> None:
        save_vectors(self._path("vectors", key, ".safetensors"), result)


def payload_sha256(payload: dict[str, Any]) -> str:
    """A sha256 of a cell's payload as canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_cell(path: Path, n_prompts: int) -> tuple[str | None, dict[str, Any] | None]:
    """``(problem, payload)``: the payload when whole, else why not."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable: {type(error).__name__}", None
    if not isinstance(stored, dict) or not isinstance(stored.get("payload"), dict):
        return "not a cell written by this version", None
    payload = stored["payload"]
    if stored.get("sha256") != payload_sha256(payload):
        return "its content does not match its checksum", None
    return _cell_shape_problem(payload, n_prompts), payload


def _cell_shape_problem(payload: dict[str, Any], n_prompts: int) -> str | None:
    for name in CELL_LISTS:
        value = payload.get(name)
        if name == "logit_scores" and name in payload and value is None:
            continue
        if not isinstance(value, list) or len(value) != n_prompts:
            return f"{name} is not a list of {n_prompts} entries"
    extra_raw = payload.get("extra_raw", {})  # extra scorers' logits values, by name
    if not isinstance(extra_raw, dict) or any(
        not isinstance(v, list) or len(v) != n_prompts or not all(map(_is_number, v))
        for v in extra_raw.values()
    ):
        return f"extra_raw does not hold lists of {n_prompts} numbers"
    if not all(isinstance(text, str) for text in payload["completions"]):
        return "a completion is not text"
    numbers = [*payload["loglik"], *payload["repetition"], *(payload["logit_scores"] or [])]
    if not all(_is_number(value) for value in numbers):
        return "a log-likelihood, repetition or score is not a number"
    return None


def _is_number(value: Any) -> bool:
    # NaN is a legitimate log-likelihood (an empty completion), infinity is not.
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isinf(value)


def model_fingerprint(lm: LanguageModel) -> str:
    """A hash of the model's name, config and every parameter's sum (cheap, and changes
    whenever the weights do in practice)."""
    digest = hashlib.sha256()
    digest.update(lm.name.encode())
    digest.update(lm.model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, parameter in lm.model.named_parameters():
            digest.update(name.encode())
            digest.update(repr(float(parameter.double().sum())).encode())
    return digest.hexdigest()


def content_key(**parts: Any) -> str:
    """A sha256 of ``parts`` as canonical JSON."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """A sha256 of a tensor's float32 bytes: the identity of a steering delta."""
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
