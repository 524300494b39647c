"""Run configuration shared by several asset modules, and the Phase-0 plan a training config describes."""

import dagster as dg
from pydantic import Field

from medtok_dagster import layout
from medtok_dagster.core import training
from medtok_dagster.readers import exam_questions, general_heldout_lines
from medtok_dagster.resources import BaseModelResource, PathsResource


class InputConfig(dg.Config):
    """How strictly raw files are read."""

    lenient: bool = False
    """Skip and count bad records instead of failing on the first one (file and line in metadata)."""


MEDICAL_SHARE = 0.75
"""Default share of Phase-0 blocks from the medical corpus (README, Phase-0 table): on held-out exam text
about as good as 1.0, while held-out general Korean gets 6% worse than the base instead of 17%."""


def source_shares(medical_share: float = MEDICAL_SHARE) -> dict[str, float]:
    """Shares of training blocks by source: ``medical_share`` medical, the rest general (Phase-0 and calibration)."""
    return {"medical": medical_share, "general": 1 - medical_share}


class TrainConfig(dg.Config):
    """Phase-0 run length; batch shape defaults to the profile (effective batch 32)."""

    max_steps: int = 60
    save_steps: int = 20
    seed: int = 0
    max_seq_len: int = 0
    """0 = the profile's sequence length."""
    per_device_batch: int = 0
    """0 = the profile's per-device batch."""
    grad_accum: int = 0
    """0 = the profile's gradient accumulation."""
    medical_share: float = Field(default=MEDICAL_SHARE, ge=0.0, le=1.0)
    """Share of training blocks from the medical corpus (train split + dictionary); the rest come from the general corpora."""
    heldout_texts: int = 64
    """Held-out exam questions and general lines each scored for base, initialised and trained (the full comparison is `model_evaluation`)."""


def heldout_texts(paths: PathsResource, count: int) -> dict[str, list[str]]:
    """Held-out exam questions (test split) and general-corpus held-out lines: evaluated, never trained on."""
    texts = {
        "exam_questions": [q.question for q in exam_questions(paths)][:count],
        "general_korean": general_heldout_lines(paths)[:count],
    }
    return {text_type: items for text_type, items in texts.items() if items}


def phase0_plan(
    paths: PathsResource,
    base_model: BaseModelResource,
    profile: str,
    variant: str,
    config: TrainConfig,
    checkpoint_dir: str | None = None,
) -> training.TrainPlan:
    """The Phase-0 run ``config`` asks for, on the training corpora; ``init_comparison``'s quick steps use it too."""
    source = base_model.source()
    return training.TrainPlan(
        base_model=source.load_from,
        base_model_kind=source.kind,
        init_dir=str(layout.initialised_dir(paths, profile, variant)),
        output_dir=str(layout.trained_dir(paths, profile, variant)),
        checkpoint_dir=checkpoint_dir or str(layout.training_checkpoints(paths, profile, variant)),
        train_sources=layout.training_sources(paths),
        source_shares=source_shares(config.medical_share),
        heldout_texts=heldout_texts(paths, config.heldout_texts),
        profile=profile,
        max_steps=config.max_steps,
        save_steps=config.save_steps,
        seed=config.seed,
        max_seq_len=config.max_seq_len or None,
        per_device_batch=config.per_device_batch or None,
        grad_accum=config.grad_accum or None,
    )
