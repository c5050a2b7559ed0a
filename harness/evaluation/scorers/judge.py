"""The ``judge`` scorer: a model reads the request and the reply and gives a verdict.

Rule scorers see phrases; a judge reads meaning, which is how the Power Steering authors
and AxBench grade generations. The judge is a model loaded here (``model:`` a catalogue
name, a hub id or a path) or an OpenAI-compatible server (``model:`` a URL), asked with a
rubric written in the behavior YAML, decoded greedily, and its verdict parsed by words:
the first success or failure word in the verdict decides; a verdict with neither is
``unparsed`` -- counted, and never a success. Every judge prompt and raw verdict goes into
``results.parquet`` (``judge_prompt``, ``judge_verdict``, ``judge_outcome``) and each call
is cached by content: the judge, the prompt and the decoding settings.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.errors import PowersteerError
from harness.evaluation.cache import content_key
from harness.evaluation.scorers.judge_clients import JudgeClient, judge_client
from harness.evaluation.scorers.registry import (
    GenerationScorer,
    ScoreResult,
    ScorerOptionError,
    register_scorer,
)

Outcome = Literal["success", "failure", "unparsed"]
PLACEHOLDERS = ("question", "request", "reply")


@dataclass
class Judge:
    """A judge's settings, its client and the verdicts it has given (by prompt)."""

    client: JudgeClient
    rubric: str
    question: str
    request_field: str
    success_words: tuple[str, ...]
    failure_words: tuple[str, ...]
    max_tokens: int
    store: Any = None  # a ResultCache (get_judgement, put_judgement): the sweep attaches it
    verdicts: dict[str, str] = field(default_factory=dict)

    def prompt(self, completion: str, row: Mapping[str, Any]) -> str:
        if self.request_field not in row:
            raise PowersteerError(
                f"a prompt row has no field {self.request_field!r} for the judge's "
                "{request}; add it or set scorer.request_field"
            )
        values = {
            "question": self.question,
            "request": str(row[self.request_field]),
            "reply": completion.strip(),
        }
        # Trailing whitespace is dropped: a YAML block or a file ends the rubric with a
        # newline, after which a small model starts a new paragraph instead of a verdict.
        return self.rubric.format_map(values).rstrip()

    def verdict(self, prompt: str) -> str:
        if prompt in self.verdicts:
            return self.verdicts[prompt]
        key = self.cache_key(prompt)
        text = self.store.get_judgement(key) if self.store is not None else None
        if text is None:
            text = self.client.complete([prompt], self.max_tokens)[0]
            if self.store is not None:
                self.store.put_judgement(key, text)
        self.verdicts[prompt] = text
        return text

    def cache_key(self, prompt: str) -> str:
        return content_key(
            kind="judgement", judge=self.client.name, prompt=prompt, max_tokens=self.max_tokens
        )

    def outcome(self, verdict: str) -> Outcome:
        return parse_verdict(verdict, self.success_words, self.failure_words)

    def record(self, completion: str, row: Mapping[str, Any]) -> dict[str, str]:
        """What is saved per row: the judge prompt, the raw verdict and its outcome."""
        prompt = self.prompt(completion, row)
        verdict = self.verdict(prompt)
        return {"prompt": prompt, "verdict": verdict, "outcome": self.outcome(verdict)}


def parse_verdict(
    verdict: str, success_words: tuple[str, ...], failure_words: tuple[str, ...]
) -> Outcome:
    """``success`` or ``failure`` by the first verdict word (ignoring case) that is one of
    the success or failure words; ``unparsed`` when there is none."""
    success = {w.lower() for w in success_words}
    failure = {w.lower() for w in failure_words}
    for word in re.findall(r"[a-z]+", verdict.lower()):
        if word in success:
            return "success"
        if word in failure:
            return "failure"
    return "unparsed"


@dataclass(frozen=True)
class JudgeScorer(GenerationScorer):
    """A generation scorer whose verdicts come from :attr:`judge` (records kept per row)."""

    judge: Judge | None = None


DEFAULT_RUBRIC = (
    "{question}\n\nRequest: {request}\nReply: {reply}\nAnswer with one word, YES or NO.\nAnswer:"
)


@register_scorer("judge", metric="success")
def judge(
    model: str,
    question: str = "Does the reply do what the request asks?",
    rubric: str = DEFAULT_RUBRIC,
    success_words: list[str] | None = None,
    failure_words: list[str] | None = None,
    request_field: str = "prompt",
    max_tokens: int = 3,
    timeout: float = 60.0,
) -> JudgeScorer:
    """Success when a judge model's verdict on the reply is a success word.

    ``model`` is the judge: a catalogue name, a hub id or a path (loaded here), or an
    OpenAI-compatible server's URL (``http://127.0.0.1:8000``, ``...#MODEL`` to name its
    model). ``rubric`` is the raw text prompt (no chat template, trailing whitespace
    dropped), with ``{question}``
    (``question``), ``{request}`` (the row's ``request_field``) and ``{reply}``. The judge
    decodes greedily up to ``max_tokens`` tokens; the first of ``success_words`` (default
    YES) or ``failure_words`` (default NO) in its verdict decides, and a verdict with
    neither is an ``unparsed`` outcome, never a success. ``timeout`` (seconds) bounds one
    endpoint call. ``value`` is 1.0 for a success, else 0.0.
    """
    fields = [name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None]
    unknown = [name for name in fields if name not in PLACEHOLDERS]
    if unknown:
        raise ScorerOptionError(
            "rubric",
            f"unknown placeholder {{{unknown[0]}}}",
            "use {question}, {request} and {reply} (double other braces: {{ }})",
        )
    if "reply" not in fields:
        raise ScorerOptionError("rubric", "has no {reply}", "put {reply} where the reply goes")
    if max_tokens < 1:
        raise ScorerOptionError("max_tokens", f"max_tokens={max_tokens}", "use at least 1")
    if timeout <= 0:
        raise ScorerOptionError("timeout", f"timeout={timeout}", "give a positive number")
    wins = tuple(success_words or ["YES"])
    losses = tuple(failure_words or ["NO"])
    both = {w.lower() for w in wins} & {w.lower() for w in losses}
    if both:
        raise ScorerOptionError(
            "failure_words", f"{sorted(both)[0]!r} is also a success word", "keep them apart"
        )
    state = Judge(
        client=judge_client(model, timeout=timeout),
        rubric=rubric,
        question=question,
        request_field=request_field,
        success_words=wins,
        failure_words=losses,
        max_tokens=max_tokens,
    )

    def score(completion: str, row: Mapping[str, Any]) -> ScoreResult:
        won = state.record(completion, row)["outcome"] == "success"
        return ScoreResult(success=won, value=float(won))

    return JudgeScorer("judge", "success", score, row_fields=(request_field,), judge=state)
