"""Offline byte-level BPE tokenizer for the model organism, with a chat template.

The BPE is trained on the corpus with an uncapped merge budget, so every word and every
number that occurs in the corpus ends up as a single token (a CoT answer like ``156`` is
one token, which is what makes the untriggered answer a one-token guess). Byte-level
pre-tokenization keeps decoding exact and leaves no unknown inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)
MAX_VOCAB = 4096

# One turn per message: role token, newline, content, end-of-turn token, newline.
# The end-of-turn token doubles as EOS so generation stops at the end of the reply.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def render_chat(messages: Iterable[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Pure-Python twin of :data:`CHAT_TEMPLATE` (fast for building training data)."""
    text = BOS + "".join(f"<|{m['role']}|>\n{m['content']}{EOS}\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def build_tokenizer(texts: Iterable[str], max_vocab: int = MAX_VOCAB) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with special tokens and chat template.

    Numbers 0-400 are fed to the trainer too, so every CoT value is a whole token even if a
    rare product were missing from the training texts.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max_vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Leading space on the first so " 0" is merged too; the newline form gives bare numbers.
    numbers = "".join(f" {n}" for n in range(401))
    extra = [numbers, numbers.replace(" ", "\n")] * 4
    tokenizer.train_from_iterator(_chain(texts, extra), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _chain(*iterables: Iterable[str]) -> Iterable[str]:
    for iterable in iterables:
        yield from iterable
