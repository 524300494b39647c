"""The adapted model against its base, on identical characters: bits/char by text type, exam accuracy, prefill speed.

Every stage (``base``: base model and tokenizer; ``initialized``; ``trained``: the merged model that
ships) is scored on the same texts, so the numbers compare directly: bits per character counts
every character, exam accuracy scores the five options of each test question, and prefill speed is
characters read per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medtok_dagster.core import lm_metrics

STAGES = ("base", "initialized", "trained")
EXAM_TEXT = "exam_questions"


@dataclass(frozen=True)
class EvalTexts:
    """What every stage is scored on: the exam questions (their texts are the exam row), other held-out texts by type, the prefill sample."""

    by_type: dict[str, list[str]]
    questions: list[lm_metrics.Question]
    prefill: list[str]


def evaluate_stage(
    stage: str,
    model: Any,
    tokenizer: Any,
    texts: EvalTexts,
    prefill_repeats: int = 3,
    token_budget: int = lm_metrics.DEFAULT_TOKEN_BUDGET,
) -> list[dict[str, Any]]:
    """One row per text type; the exam row (question texts, scored in the same pass as their options) also carries accuracy and prefill speed."""
    exam = lm_metrics.score_exam(model, tokenizer, texts.questions)
    speed = lm_metrics.prefill_speed(model, tokenizer, texts.prefill, repeats=prefill_repeats)
    rows = [
        {
            "stage": stage,
            "text_type": EXAM_TEXT,
            **exam.questions.as_row(),
            **lm_metrics.exam_accuracy(texts.questions, exam.options).as_row(),
            "prefill_chars_per_second": round(speed.chars_per_second, 1),
            "prefill_tokens_per_second": round(speed.tokens_per_second, 1),
        }
    ]
    for text_type, items in texts.by_type.items():
        rows.append(
            {
                "stage": stage,
                "text_type": text_type,
                **lm_metrics.score_texts(
                    model, tokenizer, items, token_budget=token_budget
                ).as_row(),
            }
        )
    return rows


@dataclass(frozen=True)
class Verdict:
    """Whether the shipped model is at least as good as its base on exam text, with the numbers behind it."""

    passed: bool
    base_bits: float
    trained_bits: float
    base_accuracy: float
    base_interval: tuple[float, float]
    trained_accuracy: float

    def describe(self) -> str:
        low, high = self.base_interval
        return (
            f"exam bits/char: trained {self.trained_bits:.3f} vs base {self.base_bits:.3f} ({self.trained_bits / self.base_bits - 1:+.1%}); "
            f"exam accuracy: trained {self.trained_accuracy:.3f} vs base {self.base_accuracy:.3f} "
            f"(95% interval {low:.3f}–{high:.3f}; difference {self.trained_accuracy - self.base_accuracy:+.3f})"
        )


def verdict(rows: list[dict[str, Any]]) -> Verdict:
    """Trained vs base: bits/char must not be higher, accuracy not below the base's 95% interval."""
    exam = {r["stage"]: r for r in rows if r["text_type"] == EXAM_TEXT}
    base, trained = exam["base"], exam["trained"]
    interval = (base["accuracy_ci_low"], base["accuracy_ci_high"])
    passed = (
        trained["bits_per_char"] <= base["bits_per_char"] and trained["accuracy"] >= interval[0]
    )
    return Verdict(
        passed,
        base["bits_per_char"],
        trained["bits_per_char"],
        base["accuracy"],
        interval,
        trained["accuracy"],
    )


def comparison_row(
    strategy: str, stage: str, score: lm_metrics.TextScore, reference: lm_metrics.TextScore
) -> dict[str, object]:
    """One row of the comparison: the fair metric, and how far from the base model it is."""
    return {
        "strategy": strategy,
        "stage": stage,
        **score.as_row(),
        "vs_base": round(score.bits_per_char / reference.bits_per_char - 1, 4),
    }
