"""Savings-driven token selection and the two ways of extending a Gemma tokenizer.

Why this differs from the prototype: it added bare strings picked by frequency. Gemma marks word
starts with ``▁``, so a bare ``혈당`` at a word start still costs ``▁`` + ``혈당``; and frequency ignores
how many tokens the base tokenizer already spends on a string. Here every candidate is considered in
both forms (``혈당`` and ``▁혈당``), and a lazy greedy picks, under a vocabulary budget, the form that
saves the most tokens on the training corpora *given the tokens already accepted*, so overlapping
candidates never double-count.

The corpus is reduced to *units* (whitespace-separated words, with ``▁`` on all but the first word of
a line, exactly as Gemma's normaliser sees them) and their frequencies; the cost of a unit is
simulated with the real base BPE for the pieces the new tokens do not cover.

Two strategies write the result:

* ``added_tokens`` – ``tokenizer.add_tokens`` (the prototype's mechanism, works for any HF tokenizer).
  Added tokens are matched leftmost-longest before BPE, which can split 중환자실 into 중+환자+실.
* ``bpe_merge`` – new pieces become BPE vocabulary entries with merges appended after the base
  merges, so they take part in normal BPE and never cut a word against its grain.

Modules: ``simulate`` (units and the tokenizer simulators), ``select`` (candidate forms, the greedy,
a variant's plan) and ``build`` (the written tokenizer, its token table and mapping).
"""

from medtok_dagster.core.tokenizer_build.build import (
    build_extended_tokenizer,
    new_token_ids,
    token_mapping,
    token_table,
    tokenizer_with_added,
)
from medtok_dagster.core.tokenizer_build.select import (
    MAX_FORM_CHARS,
    SENTENCE_MARKS,
    Candidate,
    Choice,
    Selection,
    UnitIndex,
    VariantPlan,
    candidate_forms,
    forms_of,
    greedy_select,
    isolated_savings,
    plan_variant,
    prototype_order,
    selectable_forms,
    split_tier1,
    tier1_added_tokens,
)
from medtok_dagster.core.tokenizer_build.simulate import (
    STRATEGIES,
    AddedTokenSim,
    BasePieces,
    BpeMergeSim,
    MergeRule,
    Simulator,
    line_units,
    make_simulator,
    mix_units,
    training_units,
    unit_frequencies,
)

__all__ = [
    "split_tier1",
    "training_units",
    "AddedTokenSim",
    "BasePieces",
    "BpeMergeSim",
    "Candidate",
    "Choice",
    "MAX_FORM_CHARS",
    "MergeRule",
    "SENTENCE_MARKS",
    "STRATEGIES",
    "Selection",
    "Simulator",
    "UnitIndex",
    "VariantPlan",
    "build_extended_tokenizer",
    "candidate_forms",
    "forms_of",
    "greedy_select",
    "isolated_savings",
    "line_units",
    "make_simulator",
    "mix_units",
    "new_token_ids",
    "plan_variant",
    "prototype_order",
    "selectable_forms",
    "tier1_added_tokens",
    "token_mapping",
    "token_table",
    "tokenizer_with_added",
    "unit_frequencies",
]
