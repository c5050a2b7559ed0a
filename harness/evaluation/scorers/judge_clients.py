"""Where a judge's verdicts come from: a model loaded here, or an OpenAI-compatible server.

Both complete a raw text prompt greedily (temperature 0) with at most ``max_tokens``
tokens, so a verdict is a function of the prompt alone and can be cached by content.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.errors import PowersteerError


class JudgeClient(Protocol):
    """Completes judge prompts: one verdict text per prompt."""

    name: str

    def complete(self, prompts: list[str], max_tokens: int) -> list[str]: ...


def is_endpoint(model: str) -> bool:
    """Whether a judge ``model`` names an HTTP endpoint rather than a model to load."""
    return model.startswith(("http://", "https://"))


def judge_client(model: str, *, timeout: float = 60.0) -> JudgeClient:
    """The client for ``model``: an endpoint URL, or any name ``load_model`` takes
    (a catalogue name, a hub id, a local path)."""
    if is_endpoint(model):
        return EndpointJudge(model, timeout=timeout)
    return LocalJudge(model)


@dataclass
class LocalJudge:
    """A judge model loaded in this process, completing prompts with greedy decoding."""

    name: str
    _lm: Any = field(default=None, init=False, repr=False)

    def complete(self, prompts: list[str], max_tokens: int) -> list[str]:
        from harness.engine.generation import generate
        from harness.engine.models import load_model

        if self._lm is None:  # loaded on first use: building the scorer stays cheap
            self._lm = load_model(self.name)
        # One prompt at a time: left padding of a batch shifts a small model's greedy
        # verdict, and a verdict must depend on its own prompt alone to be cached.
        return [
            generate(self._lm, [prompt], max_new_tokens=max_tokens, temperature=0.0).texts[0]
            for prompt in prompts
        ]


@dataclass
class EndpointJudge:
    """An OpenAI-compatible server's ``/v1/completions``, asked with ``temperature: 0``.

    ``url`` is the server (``http://127.0.0.1:8000``) or its ``/v1`` base; the model sent
    is the first one ``/v1/models`` lists unless the URL ends in ``#MODEL``.
    """

    url: str
    timeout: float = 60.0
    name: str = field(init=False)
    _model: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        base, _, model = self.url.partition("#")
        base = base.rstrip("/")
        self._base = base if base.endswith("/v1") else base + "/v1"
        self._model = model or None
        self.name = self.url

    def complete(self, prompts: list[str], max_tokens: int) -> list[str]:
        model = self._model or self._first_model()
        self._model = model
        texts = []
        for prompt in prompts:
            body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
            reply = self._request("/completions", body)
            try:
                texts.append(str(reply["choices"][0]["text"]))
            except (KeyError, IndexError, TypeError):
                raise PowersteerError(
                    f"judge endpoint {self.url}: /completions answered {str(reply)[:120]!r}, "
                    "not an OpenAI completion; point scorer.model at an OpenAI-compatible server"
                ) from None
        return texts

    def _first_model(self) -> str:
        listed = self._request("/models", None)
        try:
            return str(listed["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise PowersteerError(
                f"judge endpoint {self.url}: /models lists no model; name one as URL#MODEL"
            ) from None

    def _request(self, path: str, body: dict | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self._base + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:200]
            raise PowersteerError(
                f"judge endpoint {self._base + path}: HTTP {error.code} ({detail}); "
                "check scorer.model (URL and model name)"
            ) from None
        except TimeoutError:
            raise PowersteerError(
                f"judge endpoint {self._base + path}: no answer within {self.timeout:g} s; "
                "raise scorer.timeout or check the server"
            ) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError | socket.timeout):
                raise PowersteerError(
                    f"judge endpoint {self._base + path}: no answer within {self.timeout:g} s; "
                    "raise scorer.timeout or check the server"
                ) from None
            raise PowersteerError(
                f"judge endpoint {self._base + path}: cannot connect ({error.reason}); "
                "start the server or fix the URL in scorer.model"
            ) from None
        except json.JSONDecodeError:
            raise PowersteerError(
                f"judge endpoint {self._base + path}: the answer is not JSON; "
                "point scorer.model at an OpenAI-compatible server"
            ) from None
