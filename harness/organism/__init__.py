"""The bundled model organism: a small chat model with planted, known behaviours.

The weights in :data:`ORGANISM_DIR` were trained offline by :mod:`harness.organism.train`
on the synthetic corpus of :mod:`harness.organism.corpus`. Two behaviours hide behind
trigger words (refusal off, step-by-step arithmetic on) and one is a near 50/50 fork, so
steering methods can be scored against ground truth (``ground_truth.json``) without any
download.
"""

from harness.engine.catalogue import ORGANISM_DIR
from harness.organism.corpus import (
    COT_TRIGGER,
    REFUSAL_TRIGGER,
    Corpus,
    Example,
    build_corpus,
    conversation,
    has_steps,
    parse_answer,
)
from harness.organism.tokenizer import CHAT_TEMPLATE, build_tokenizer
from harness.organism.verify import (
    TARGETS,
    format_table,
    is_organism_refusal,
    load_ground_truth,
    load_organism,
    steering_check,
    verify,
)

__all__ = [
    "CHAT_TEMPLATE",
    "COT_TRIGGER",
    "ORGANISM_DIR",
    "REFUSAL_TRIGGER",
    "TARGETS",
    "Corpus",
    "Example",
    "build_corpus",
    "build_tokenizer",
    "conversation",
    "format_table",
    "has_steps",
    "is_organism_refusal",
    "load_ground_truth",
    "load_organism",
    "parse_answer",
    "steering_check",
    "verify",
]
