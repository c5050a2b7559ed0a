"""A sweep's cells evaluated in batches: each cell's delta, cache key, generations and rows.

One :class:`CellRunner` serves one layer pair of one behavior; the sweep
(:mod:`harness.evaluation.sweep`) decides which cells to run, the runner's executor decides
where uncached batches are evaluated, and the runner turns payloads into scored rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from harness.engine.generation import completion_loglik, generate, repetition_rate
from harness.engine.methods import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.steering import steer
from harness.evaluation.cache import ResultCache, content_key, tensor_digest
from harness.evaluation.cells import UNSTEERED, Cell
from harness.evaluation.executors import Executor, LocalExecutor
from harness.evaluation.preparation import PreparedBehavior
from harness.evaluation.scorers import GenerationScorer, Scorer, checked_score, score_completion
from harness.evaluation.scorers.paired import RAW, PairedScorer, logits_part, pair_with_unsteered
from harness.evaluation.scoring import (
    add_extra_scores,
    add_judge_records,
    logits_extras,
    raw_column,
)


class CellRunner:
    """Evaluates cells in batches, reusing cached ones, and returns one row per prompt."""

    def __init__(
        self,
        lm: LanguageModel,
        prepared: PreparedBehavior,
        scorer: Scorer,
        cache: ResultCache,
        fingerprint: str,
        vectors: dict[str, SteeringVectors],
        scale_unit: float,
        batch_rows: int,
    ) -> None:
        self.lm, self.prepared, self.scorer, self.cache = lm, prepared, scorer, cache
        self.fingerprint, self.vectors, self.scale_unit = fingerprint, vectors, scale_unit
        self.batch_rows = batch_rows
        self.computed = self.reused = 0
        self.extras: list[Scorer] = []  # the behavior's extra_scorers, scored on every row
        self.executor: Executor = LocalExecutor()
        # (prompt, completion ids) -> unsteered log-likelihood. Many cells (small scales,
        # random directions) reproduce the unsteered completion; scoring it once is exact.
        self.loglik_memo: dict[tuple[str, tuple[int, ...]], float] = {}
        generation = prepared.behavior.generation
        self.generation = {
            "max_new_tokens": generation.max_new_tokens,
            "temperature": generation.temperature,
        }

    def delta(self, cell: Cell) -> torch.Tensor:
        """The raw vector added at the source block (zeros when unsteered)."""
        if cell.method == UNSTEERED:
            return torch.zeros(self.lm.d_model)
        unit = self.vectors[cell.method].vectors[cell.vector].float()
        return unit * (cell.sign * cell.scale * self.scale_unit)

    def key(self, cell: Cell, prompts: list[str]) -> str:
        logits_spec = (
            self.prepared.behavior.scorer.as_dict()
            if logits_part(self.scorer) is not None
            else None
        )
        # Only when there are any, so cells cached before extra scorers existed stay valid.
        extra = [
            spec.as_dict()
            for spec, built in zip(self.prepared.behavior.extra_scorers, self.extras, strict=True)
            if logits_part(built) is not None
        ]
        return content_key(
            **({"extra_logits_scorers": extra} if extra else {}),
            kind="cell",
            model=self.fingerprint,
            prompts=prompts,
            layer=self.prepared.source,
            delta=tensor_digest(self.delta(cell)),
            generation=self.generation,
            logits_scorer=logits_spec,
            seed=self.prepared.behavior.split.seed,
        )

    def run(self, split: str, cells: list[Cell], progress: bool) -> pd.DataFrame:
        prompts = self.prepared.split_prompts(split)
        payloads: dict[Cell, dict[str, Any]] = {}
        missing: list[tuple[Cell, str]] = []
        for cell in cells:
            key = self.key(cell, prompts)
            cached = self.cache.get_cell(key, len(prompts))
            if cached is not None:
                payloads[cell] = cached
                self.reused += 1
            else:
                missing.append((cell, key))
        per_batch = max(1, self.batch_rows // len(prompts))
        batches = [missing[i : i + per_batch] for i in range(0, len(missing), per_batch)]
        name = self.prepared.behavior.name
        bar = tqdm(
            total=len(missing),
            desc=f"{name} {split} cells",
            unit="cell",
            disable=not progress or not missing,
            leave=False,
        )
        with bar:
            for batch, batch_payloads in self.executor.evaluate(self, split, batches):
                for (cell, key), payload in zip(batch, batch_payloads, strict=True):
                    if not self.executor.writes_cache:
                        self.cache.put_cell(key, payload)
                    payloads[cell] = payload
                    self.computed += 1
                bar.update(len(batch))
        return self._frame(split, cells, payloads)

    def _evaluate(self, batch: list[tuple[Cell, str]], split: str) -> Iterator[dict[str, Any]]:
        prompts = self.prepared.split_prompts(split)
        n = len(prompts)
        all_prompts = prompts * len(batch)
        vectors = torch.stack([self.delta(cell) for cell, _ in batch]).repeat_interleave(n, 0)
        scales = torch.ones(vectors.shape[0])
        generation = self.prepared.behavior.generation
        completions = generate(
            self.lm,
            all_prompts,
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            seed=self.prepared.behavior.split.seed,
            vectors=vectors.to(self.lm.dtype),
            scales=scales,
            layer=self.prepared.source,
        )
        loglik = self._loglik(all_prompts, completions.token_ids)
        logit_scores: list[float] | None = None
        logits_scorer = logits_part(self.scorer)
        if logits_scorer is not None:
            rows = [self.prepared.rows[i] for i in self.prepared.indices(split)] * len(batch)
            with steer(self.lm, vectors.to(self.lm.dtype), self.prepared.source, scales):
                logit_scores = logits_scorer.score(self.lm, all_prompts, rows)
        extra_raw: dict[str, list[float]] = {}
        for name, extra in logits_extras(self.extras):
            rows = [self.prepared.rows[i] for i in self.prepared.indices(split)] * len(batch)
            with steer(self.lm, vectors.to(self.lm.dtype), self.prepared.source, scales):
                extra_raw[name] = extra.score(self.lm, all_prompts, rows)
        for j in range(len(batch)):
            part = slice(j * n, (j + 1) * n)
            yield {
                "completions": completions.texts[part],
                "loglik": loglik[part],
                "repetition": [repetition_rate(ids) for ids in completions.token_ids[part]],
                "logit_scores": logit_scores[part] if logit_scores is not None else None,
                **({"extra_raw": {k: v[part] for k, v in extra_raw.items()}} if extra_raw else {}),
            }

    def _loglik(self, prompts: list[str], token_ids: list[list[int]]) -> list[float]:
        keys = [(p, tuple(ids)) for p, ids in zip(prompts, token_ids, strict=True)]
        new = list(dict.fromkeys(k for k in keys if k not in self.loglik_memo))
        if new:
            values = completion_loglik(self.lm, [p for p, _ in new], [list(i) for _, i in new])
            self.loglik_memo.update(zip(new, values, strict=True))
        return [self.loglik_memo[k] for k in keys]

    def _frame(
        self, split: str, cells: list[Cell], payloads: dict[Cell, dict[str, Any]]
    ) -> pd.DataFrame:
        indices = self.prepared.indices(split)
        source = self.prepared.behavior.path or self.prepared.behavior.name
        records = []
        for cell in cells:
            payload = payloads[cell]
            for j, index in enumerate(indices):
                row = self.prepared.rows[index]
                if isinstance(self.scorer, GenerationScorer):
                    outcome = score_completion(
                        self.scorer,
                        payload["completions"][j],
                        row,
                        prompt_index=index,
                        source=source,
                    )
                    success, score = outcome.success, outcome.value
                elif logits_part(self.scorer) is not None:
                    score = checked_score(
                        self.scorer, payload["logit_scores"][j], prompt_index=index, source=source
                    )
                    success = None
                else:  # a paired scorer comparing completions: set by pairing below
                    success, score = None, float("nan")
                records.append(
                    {
                        "behavior": self.prepared.behavior.name,
                        "metric": self.scorer.metric,
                        "split": split,
                        "prompt_index": index,
                        "prompt": self.prepared.prompts[index],
                        "method": cell.method,
                        "vector": cell.vector,
                        "sign": cell.sign,
                        "scale": cell.scale,
                        "completion": payload["completions"][j],
                        "success": success,
                        "score": score,
                        "loglik": payload["loglik"][j],
                        "repetition": payload["repetition"][j],
                        **{
                            raw_column(name): payload["extra_raw"][name][j]
                            for name, _ in logits_extras(self.extras)
                        },
                    }
                )
        frame = pd.DataFrame.from_records(records)
        if logits_part(self.scorer) is not None:  # kept: a paired rescore compares these
            frame[RAW] = frame["score"]
        if isinstance(self.scorer, PairedScorer):
            pair_with_unsteered(self.scorer, frame)
        add_judge_records(self.scorer, frame, self.prepared.rows)
        add_extra_scores(self.extras, frame, self.prepared.rows, source=source)
        return frame
