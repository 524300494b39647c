"""How a causal language model is scored on text: fair bits per character, exam accuracy, prefill speed.

Bits per character compares models with different tokenizers only if every character is scored
the same way. So every text starts from ``<bos>`` (as inference does: Gemma without it is about
twice as uncertain), every token of every text is scored exactly once (texts longer than the window
are cut into windows whose earlier tokens serve as unscored context), pad positions are never
scored, and the total is divided by the characters of all texts. Log-softmax is computed only at the
scored positions (``logits_to_keep`` with a boolean mask), which is where a 262k-word output layer
spends most of a small model's time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_WINDOW = 1024
DEFAULT_TOKEN_BUDGET = 1024
"""Tokens (padding included) per forward pass: bounds the float32 logits to budget × vocab."""
ANSWER_PROMPT = "\n정답:"
"""Appended to an exam question before an option is scored; the option follows after a space."""
WILSON_Z = 1.959964


def encode_plain(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, batched through the Rust backend."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def bos_id(tokenizer: Any) -> int:
    """The id every scored sequence starts with; a tokenizer without one cannot be scored fairly."""
    if tokenizer.bos_token_id is None:
        raise ValueError(
            "the tokenizer has no <bos> token; sequences must start the way inference starts them"
        )
    return int(tokenizer.bos_token_id)


def pad_id(tokenizer: Any) -> int:
    """Padding id (never scored): the tokenizer's pad token, else its eos."""
    return int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )


@dataclass(frozen=True)
class Window:
    """One forward pass's input: ``ids`` whose tokens from ``first_scored`` on are scored."""

    source: int
    ids: list[int]
    first_scored: int


def windows(
    source: int,
    ids: Sequence[int],
    bos: int,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
) -> list[Window]:
    """Cut ``[<bos>] + ids`` into windows that score every token of ``ids`` exactly once.

    The first window starts at ``<bos>``. A later one starts with ``<bos>`` too, followed by up to
    ``window - 1 - stride`` tokens of preceding text as unscored context, then the next ``stride``
    tokens to score. A text that fits in one window is one window.
    """
    if window < 2:
        raise ValueError("window must hold <bos> and at least one scored token")
    step = min(stride or window // 2, window - 1)
    step = max(step, 1)
    ids = list(ids)
    if len(ids) + 1 <= window:
        return [Window(source, [bos, *ids], 1)] if ids else []
    out = [Window(source, [bos, *ids[: window - 1]], 1)]
    scored = window - 1
    while scored < len(ids):
        end = min(scored + step, len(ids))
        start = max(end - (window - 1), 0)
        out.append(Window(source, [bos, *ids[start:end]], 1 + scored - start))
        scored = end
    return out


def _batches(items: Sequence[Window], token_budget: int) -> Iterator[list[Window]]:
    """Windows grouped by length (little padding) so that batch × longest ≤ ``token_budget``."""
    ordered = sorted(items, key=lambda w: len(w.ids))
    batch: list[Window] = []
    for item in ordered:
        if batch and (len(batch) + 1) * len(item.ids) > token_budget:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def model_device(model: Any) -> torch.device:
    """Where the model's input embeddings live (inputs go there)."""
    return model.get_input_embeddings().weight.device


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target under its row of ``logits``, in float64 on the CPU.

    The softmax runs in fp32 whatever the model's precision: in bf16 the normaliser over 262k
    words loses the small probabilities that bits per character add up.
    """
    return (
        torch.log_softmax(logits.float(), dim=-1)
        .gather(-1, targets.to(logits.device)[:, None])
        .squeeze(-1)
        .double()
        .cpu()
    )


@torch.no_grad()
def scored_logprobs(
    model: Any, items: Sequence[Window], pad: int, token_budget: int = DEFAULT_TOKEN_BUDGET
) -> list[torch.Tensor]:
    """Log-probability of every scored token of every window (float64 on the CPU, in input order).

    Right padding with an attention mask: in a causal model a real token never sees a pad, so a
    padded batch scores exactly what one window at a time scores.
    """
    model.eval()
    device = model_device(model)
    index = {id(item): i for i, item in enumerate(items)}
    results: list[torch.Tensor | None] = [None] * len(items)
    for batch in _batches(items, token_budget):
        longest = max(len(w.ids) for w in batch)
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        keep = torch.zeros((len(batch), longest), dtype=torch.bool)
        for row, item in enumerate(batch):
            input_ids[row, : len(item.ids)] = torch.tensor(item.ids)
            attention[row, : len(item.ids)] = 1
            keep[row, item.first_scored - 1 : len(item.ids) - 1] = True
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            logits_to_keep=keep.to(device),
            use_cache=False,
        ).logits
        targets = torch.cat([torch.tensor(w.ids[w.first_scored :]) for w in batch]).to(
            logits.device
        )
        logprobs = target_logprobs(logits, targets)
        offset = 0
        for item in batch:
            count = len(item.ids) - item.first_scored
            results[index[id(item)]] = logprobs[offset : offset + count]
            offset += count
    return [r if r is not None else torch.zeros(0, dtype=torch.float64) for r in results]


@dataclass(frozen=True)
class TextScore:
    """A model's total negative log-likelihood on a set of texts, in bits, with what it was spread over."""

    bits: float
    tokens: int
    chars: int
    texts: int

    @property
    def bits_per_char(self) -> float:
        """The number that compares tokenizers: every character of every text is scored."""
        return self.bits / max(self.chars, 1)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def loss_per_token(self) -> float:
        """Mean NLL per token in nats; only comparable between models that share a tokenizer."""
        return self.bits * math.log(2) / max(self.tokens, 1)

    def as_row(self) -> dict[str, float | int]:
        return {
            "bits_per_char": round(self.bits_per_char, 4),
            "tokens_per_char": round(self.tokens_per_char, 4),
            "loss_per_token": round(self.loss_per_token, 4),
            "tokens": self.tokens,
            "chars": self.chars,
            "texts": self.texts,
        }


def text_bits(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> list[float]:
    """Negative log-likelihood of each text in bits, every token scored once from ``<bos>``."""
    bos = bos_id(tokenizer)
    items = [
        w
        for i, ids in enumerate(encode_plain(tokenizer, texts))
        for w in windows(i, ids, bos, window, stride)
    ]
    bits = [0.0] * len(texts)
    for item, logprobs in zip(
        items, scored_logprobs(model, items, pad_id(tokenizer), token_budget)
    ):
        bits[item.source] -= float(logprobs.sum()) / math.log(2)
    return bits


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> TextScore:
    """Bits per character (and tokens per character) of ``model`` on ``texts``: the fair metric."""
    texts = [t for t in texts if t]
    bits = text_bits(model, tokenizer, texts, window, stride, token_budget)
    tokens = sum(len(ids) for ids in encode_plain(tokenizer, texts))
    return TextScore(sum(bits), tokens, sum(len(t) for t in texts), len(texts))


@dataclass(frozen=True)
class Question:
    """An exam question with its options and the index of the right one (0-based)."""

    question: str
    options: tuple[str, ...]
    answer: int


def questions_from_records(
    records: Sequence[Mapping[str, Any]], option_fields: Sequence[str] = ("A", "B", "C", "D", "E")
) -> list[Question]:
    """KorMedMCQA records (``answer`` 1-based) as :class:`Question` objects; records without a valid answer are left out."""
    out = []
    for record in records:
        options = tuple(
            str(record[f])
            for f in option_fields
            if isinstance(record.get(f), str) and record[f].strip()
        )
        answer = record.get("answer")
        if isinstance(answer, int) and 1 <= answer <= len(options):
            out.append(Question(str(record["question"]), options, answer - 1))
    return out


@dataclass(frozen=True)
class OptionScores:
    """Per question, the summed log-probability of each option and each option's length in characters."""

    logprobs: list[list[float]]
    chars: list[list[int]]


@dataclass(frozen=True)
class ExamScores:
    """One pass over the exam: bits/char of the question texts and the options' log-likelihoods."""

    questions: TextScore
    options: OptionScores


def _bits(logits: torch.Tensor, targets: Sequence[int]) -> float:
    """Negative log-likelihood in bits of ``targets`` under ``logits`` (one row per target)."""
    return -float(
        target_logprobs(logits, torch.tensor(targets, dtype=torch.long)).sum()
    ) / math.log(2)


def last_positions(lengths: Sequence[int], count: int, device: torch.device) -> torch.Tensor:
    """A boolean ``logits_to_keep`` mask: the last ``count`` real positions of each right-padded row.

    A mask gives the output layer one flat ``[positions, hidden]`` matrix. An integer
    ``logits_to_keep`` slices a strided ``[batch, k, hidden]`` view instead, which on CPU can send
    the product with a vocabulary whose size is not a multiple of 64 down a batched path that copies
    the whole output matrix per call (measured: 10× slower prefill on the extended 270M).
    """
    keep = torch.zeros((len(lengths), max(lengths)), dtype=torch.bool)
    for row, length in enumerate(lengths):
        keep[row, length - count : length] = True
    return keep.to(device)


@torch.no_grad()
def _score_question(
    model: Any, bos: int, question: list[int], prompt: list[int], options: list[list[int]], pad: int
) -> tuple[float, list[float]]:
    """One question: its own bits (every token from ``<bos>``), then each option's log-likelihood.

    The question runs once and is scored as :func:`score_texts` scores it; its KV cache, extended by
    the answer prompt, is repeated for the options, which run as one right-padded batch with logits
    computed only at the positions that predict option tokens.
    """
    device = model_device(model)
    head = model(
        input_ids=torch.tensor([[bos, *question]], device=device),
        use_cache=True,
        logits_to_keep=torch.arange(len(question) + 1, device=device)[None] < len(question),
    )
    cache = head.cache if hasattr(head, "cache") else head.past_key_values
    question_bits = _bits(head.logits, question)
    prefix = model(
        input_ids=torch.tensor([prompt], device=device),
        cache=cache,
        use_cache=True,
        logits_to_keep=last_positions([len(prompt)], 1, device),
    )
    cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
    cache.batch_repeat_interleave(len(options))
    first = torch.log_softmax(prefix.logits[-1].float(), dim=-1)
    context = 1 + len(question) + len(prompt)
    longest = max(len(o) for o in options)
    input_ids = torch.full((len(options), longest), pad, dtype=torch.long)
    attention = torch.zeros((len(options), context + longest), dtype=torch.long)
    attention[:, :context] = 1
    keep = torch.zeros((len(options), longest), dtype=torch.bool)
    for row, option in enumerate(options):
        input_ids[row, : len(option)] = torch.tensor(option)
        attention[row, context : context + len(option)] = 1
        keep[row, : len(option) - 1] = True
    position_ids = torch.arange(context, context + longest)[None].expand(len(options), -1)
    sums = [float(first[o[0]]) for o in options]
    if longest > 1:
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=position_ids.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=keep.to(device),
        ).logits
        targets = torch.cat([torch.tensor(o[1:], dtype=torch.long) for o in options]).to(
            logits.device
        )
        logprobs = target_logprobs(logits, targets)
        offset = 0
        for row, option in enumerate(options):
            sums[row] += float(logprobs[offset : offset + len(option) - 1].sum())
            offset += len(option) - 1
    return question_bits, sums


def option_texts(question: Question) -> tuple[str, list[str]]:
    """The scored context and continuations: ``question + ANSWER_PROMPT`` and each option after a space."""
    return question.question + ANSWER_PROMPT, [" " + option for option in question.options]


def score_exam(model: Any, tokenizer: Any, questions: Sequence[Question]) -> ExamScores:
    """Bits/char of the question texts and every option's log-likelihood, one forward pass per question.

    The question is tokenised on its own (as :func:`score_texts` tokenises it) and the answer prompt
    separately, so the question's bits are exactly its held-out score and its cache serves the options.
    """
    model.eval()
    bos, pad = bos_id(tokenizer), pad_id(tokenizer)
    (prompt,) = encode_plain(tokenizer, [ANSWER_PROMPT])
    bits, tokens, logprobs, chars = 0.0, 0, [], []
    for question in questions:
        continuations = option_texts(question)[1]
        question_ids, *option_ids = encode_plain(tokenizer, [question.question, *continuations])
        question_bits, sums = _score_question(model, bos, question_ids, prompt, option_ids, pad)
        bits, tokens = bits + question_bits, tokens + len(question_ids)
        logprobs.append(sums)
        chars.append([len(c) for c in continuations])
    text = TextScore(bits, tokens, sum(len(q.question) for q in questions), len(questions))
    return ExamScores(text, OptionScores(logprobs, chars))


def score_options(model: Any, tokenizer: Any, questions: Sequence[Question]) -> OptionScores:
    """Log-likelihood of every option after its question (the options' tokens only)."""
    return score_exam(model, tokenizer, questions).options


def score_options_naive(model: Any, tokenizer: Any, questions: Sequence[Question]) -> OptionScores:
    """The per-option loop (full forward, full-vocabulary logits at every position): the benchmark baseline."""
    model.eval()
    bos = bos_id(tokenizer)
    (prompt,) = encode_plain(tokenizer, [ANSWER_PROMPT])
    logprobs, chars = [], []
    with torch.no_grad():
        for question in questions:
            continuations = option_texts(question)[1]
            question_ids, *option_ids = encode_plain(tokenizer, [question.question, *continuations])
            context_ids = [*question_ids, *prompt]
            row = []
            for option in option_ids:
                ids = torch.tensor([[bos, *context_ids, *option]], device=model_device(model))
                all_logprobs = torch.log_softmax(
                    model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1
                )
                positions = torch.arange(
                    len(context_ids), len(context_ids) + len(option), device=all_logprobs.device
                )
                row.append(float(all_logprobs[positions, ids[0, positions + 1]].double().sum()))
            logprobs.append(row)
            chars.append([len(c) for c in continuations])
    return OptionScores(logprobs, chars)


def wilson_interval(correct: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at small n and near 0 or 1, unlike the normal one)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class ExamAccuracy:
    """Exam accuracy with the option chosen by per-character and by summed log-likelihood."""

    questions: int
    correct_per_char: int
    correct_sum: int
    chance: float

    @property
    def accuracy(self) -> float:
        """Accuracy by log-likelihood per character (the headline: options differ in length)."""
        return self.correct_per_char / max(self.questions, 1)

    @property
    def accuracy_unnormalised(self) -> float:
        return self.correct_sum / max(self.questions, 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct_per_char, self.questions)

    def as_row(self) -> dict[str, float | int]:
        low, high = self.interval
        return {
            "accuracy": round(self.accuracy, 4),
            "accuracy_ci_low": round(low, 4),
            "accuracy_ci_high": round(high, 4),
            "accuracy_unnormalised": round(self.accuracy_unnormalised, 4),
            "chance": round(self.chance, 4),
            "questions": self.questions,
        }


def exam_accuracy(questions: Sequence[Question], scores: OptionScores) -> ExamAccuracy:
    """Pick, per question, the option with the highest log-likelihood per character (and summed)."""
    per_char = sum(
        max(range(len(lp)), key=lambda i: lp[i] / max(ch[i], 1)) == q.answer
        for q, lp, ch in zip(questions, scores.logprobs, scores.chars)
    )
    summed = sum(
        max(range(len(lp)), key=lambda i: lp[i]) == q.answer
        for q, lp in zip(questions, scores.logprobs)
    )
    chance = statistics.fmean(1 / len(q.options) for q in questions) if questions else 0.0
    return ExamAccuracy(len(questions), int(per_char), int(summed), chance)


@dataclass(frozen=True)
class PrefillSpeed:
    """How fast a model reads text: characters (and tokens) per second of prefill, median over repeats."""

    chars_per_second: float
    tokens_per_second: float
    seconds: float
    tokens: int
    chars: int


@torch.no_grad()
def prefill_speed(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8, repeats: int = 3
) -> PrefillSpeed:
    """Time the forward pass over ``texts`` as serving does it: prompt in, logits for each last real token only.

    A shorter sequence is the point of a bigger vocabulary, so this is measured in characters per
    second; the median of ``repeats`` passes (after one warm-up batch) damps a busy machine.
    """
    model.eval()
    bos, pad = bos_id(tokenizer), pad_id(tokenizer)
    sequences = sorted(([bos, *ids] for ids in encode_plain(tokenizer, texts)), key=len)
    device = model_device(model)
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        longest = max(len(s) for s in chunk)
        ids = torch.tensor([s + [pad] * (longest - len(s)) for s in chunk], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in chunk], device=device)
        batches.append((ids, mask, last_positions([len(s) for s in chunk], 1, device)))

    def one_pass() -> float:
        started = time.perf_counter()
        for ids, mask, last in batches:
            model(input_ids=ids, attention_mask=mask, logits_to_keep=last, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    if batches:
        ids, mask, last = batches[0]
        model(input_ids=ids, attention_mask=mask, logits_to_keep=last, use_cache=False)
    seconds = statistics.median(one_pass() for _ in range(repeats))
    tokens = sum(len(s) for s in sequences)
    chars = sum(len(t) for t in texts)
    return PrefillSpeed(
        chars / max(seconds, 1e-9), tokens / max(seconds, 1e-9), seconds, tokens, chars
    )
