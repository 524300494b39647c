"""The tokenizer variants: which candidate tiers each one draws on, and its default budget.

``dedicated`` holds Tier 1 only (user tokens, symbols, notation, dictionary terms); ``ded_medical``
adds medical-corpus candidates; ``ded_med_normal`` adds general-Korean candidates as well.
"""

from __future__ import annotations

VARIANTS = ("dedicated", "ded_medical", "ded_med_normal")
VARIANT_TIERS: dict[str, tuple[str, ...]] = {
    "dedicated": (),
    "ded_medical": ("medical",),
    "ded_med_normal": ("medical", "general"),
}
DEFAULT_BUDGETS: dict[str, int] = {"dedicated": 4700, "ded_medical": 10700, "ded_med_normal": 20600}
"""Maximum new vocabulary entries per variant, Tier 1 included (the prototype's sizes)."""


def uses_general_corpus(variant: str) -> bool:
    """Whether the variant's selection is measured on the general corpora too."""
    return "general" in VARIANT_TIERS[variant]
