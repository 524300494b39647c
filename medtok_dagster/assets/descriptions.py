"""Token descriptions per variant, validated by blocking checks before any model is initialised."""

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import field_validator

from medtok_dagster import layout
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import descriptions, dictionary, gold
from medtok_dagster.core.io import atomic_write_json, read_json
from medtok_dagster.core.tokenizer_build import new_token_ids
from medtok_dagster.metadata import md_counts, md_plot, md_table
from medtok_dagster.partitions import variant_partitions
from medtok_dagster.resources import (
    EVAL_DIR,
    MEDICAL_DICTIONARY,
    TOKENIZER_DATA_DIR,
    BaseModelResource,
    PathsResource,
    relative_path,
)

GROUP = "descriptions"
CODE_VERSION = "2"
GOLD_SET = f"{EVAL_DIR}/token_gold.jsonl"
LLM_FILE = "llm_token_descriptions.json"
MIN_GOLD_TOKENS = 100
"""The LLM is judged on the gold tokens it described; fewer than this many cannot show it helps."""
BLOCKING_CHECKS = (
    "no_hangul",
    "no_quotes",
    "no_parentheses",
    "clean_spaces",
    "not_empty",
    "every_new_token_described_once",
)
WARNING_CHECKS = ("unique_ratio", "generic_fraction")


class DescriptionChecksConfig(dg.Config):
    """Thresholds of the warning checks."""

    min_unique_ratio: float = 0.69
    """The prototype reached 69 % unique descriptions after review."""
    max_generic_fraction: float = 0.35
    """General-Korean words have no dictionary entry; above this share, run the LLM describer."""


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """Blocking and warning checks every description asset carries."""
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True) for name in BLOCKING_CHECKS] + [
        dg.AssetCheckSpec(name, asset=asset) for name in WARNING_CHECKS
    ]


def expected_tokens(paths: PathsResource, variant: str) -> dict[str, int]:
    """The variant tokenizer's new tokens and ids, read from what was actually saved."""
    directory = layout.variant_dir(paths, variant)
    mapping = read_json(directory / layout.TOKEN_MAPPING)
    tokenizer = core_base_model.load_local_tokenizer(directory)
    return new_token_ids(tokenizer, mapping["original_vocab_size"])


def _offenders(violations: list[descriptions.Violation]) -> dg.MetadataValue:
    frame = pd.DataFrame(
        [vars(v) for v in violations[:20]], columns=["token", "token_id", "problem"]
    )
    return md_table(frame, rows=20)


def validate(
    descs: list[descriptions.Description],
    expected: dict[str, int],
    config: DescriptionChecksConfig,
    asset: str,
) -> list[dg.AssetCheckResult]:
    """All checks on a description set; failures name the first offending tokens."""
    results = []
    for name, violations in descriptions.text_violations(descs).items():
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key=asset,
                passed=not violations,
                metadata={"violations": len(violations), "offenders": _offenders(violations)},
            )
        )
    coverage = descriptions.coverage_violations(descs, expected)
    results.append(
        dg.AssetCheckResult(
            check_name="every_new_token_described_once",
            asset_key=asset,
            passed=not coverage,
            metadata={
                "violations": len(coverage),
                "expected_tokens": len(expected),
                "offenders": _offenders(coverage),
            },
        )
    )
    ratio = descriptions.unique_ratio(descs)
    generic = descriptions.method_breakdown(descs)["generic"]
    results.append(
        dg.AssetCheckResult(
            check_name="unique_ratio",
            asset_key=asset,
            passed=ratio >= config.min_unique_ratio,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"unique_ratio": ratio, "threshold": config.min_unique_ratio},
        )
    )
    generic_tokens = [
        descriptions.Violation(d.token, d.token_id, "generic")
        for d in descs
        if d.method == "generic"
    ]
    results.append(
        dg.AssetCheckResult(
            check_name="generic_fraction",
            asset_key=asset,
            passed=generic <= config.max_generic_fraction,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "generic_fraction": generic,
                "threshold": config.max_generic_fraction,
                "offenders": _offenders(generic_tokens),
            },
        )
    )
    return results


def validation_frame(results: list[dg.AssetCheckResult], variant: str, run_id: str) -> pd.DataFrame:
    """Check results as validation-metric rows (one per check per materialization)."""
    now = datetime.now(UTC).isoformat()
    return pd.DataFrame(
        [
            {
                "variant": variant,
                "check": r.check_name,
                "passed": r.passed,
                "severity": r.severity.value,
                "value": float(
                    next(
                        (
                            m.value
                            for k, m in r.metadata.items()
                            if k in ("violations", "unique_ratio", "generic_fraction")
                        ),
                        0,
                    )
                ),
                "run_id": run_id,
                "checked_at": now,
            }
            for r in results
        ]
    )


def write_reviewed(path: Path, descs: list[descriptions.Description]) -> Path:
    """The prototype's reviewed JSON: [{token, token_id, description, method}]."""
    return atomic_write_json(path, [vars(d) for d in descs])


def read_descriptions(path: Path) -> list[descriptions.Description]:
    """Descriptions written by :func:`write_reviewed`; none if the file was never written."""
    return [descriptions.Description(**row) for row in read_json(path)] if path.exists() else []


def load_glossary(paths: PathsResource) -> tuple[dict[str, str], dict[str, int]]:
    """Dictionary term → English gloss, and the dictionary defects it skipped."""
    loaded = dictionary.load_dictionary(paths.data(MEDICAL_DICTIONARY), lenient=True)
    glossary, issues = descriptions.build_glossary((e.term, e.definition) for e in loaded.entries)
    return glossary, dict(issues)


def llm_path(paths: PathsResource, variant: str) -> Path:
    """The LLM's descriptions of the variant's new tokens (``llm_token_descriptions``)."""
    return paths.data(TOKENIZER_DATA_DIR, layout.variant_name(variant), LLM_FILE)


@dataclass(frozen=True)
class GoldReport:
    """Gold-set scores per method and per category, and whether the LLM output may be used."""

    methods: dict[str, gold.GoldScore]
    categories: dict[str, gold.GoldScore]
    llm_trusted: bool


def gold_report(
    paths: PathsResource, glossary: dict[str, str], llm: list[descriptions.Description]
) -> GoldReport | None:
    """Score the rule-based describer (overall and per rule), the LLM, and both combined.

    The LLM is scored on the gold tokens among those it described (the variant's new tokens), and
    ``combined`` and the rule-based figure it is compared with on the same tokens. The LLM output
    is trusted only if combining it raises the correct share there and keeps the wrong share
    within the target (:func:`gold.improves`), on at least :data:`MIN_GOLD_TOKENS` tokens: an LLM
    that is wrong more often than right on the tokens the rules give up on must not replace them.
    """
    if not paths.data(GOLD_SET).exists():
        return None
    tokens = gold.read_gold(paths.data(GOLD_SET))
    rule = descriptions.describe_tokens([(g.token, k) for k, g in enumerate(tokens)], glossary)
    by_token = {d.token: d for d in rule}
    methods = {"rule_based": gold.score(by_token, tokens)}
    by_rule = gold.score_by(by_token, tokens, lambda g: by_token[g.token].method)
    methods.update({f"rule_based/{m}": s for m, s in by_rule.items()})
    ids = {d.token: d.token_id for d in rule}
    described = [replace(d, token_id=ids[d.token]) for d in descriptions.fix(llm) if d.token in ids]
    trusted = False
    if described:
        scored = [g for g in tokens if g.token in {d.token for d in described}]
        combined = {d.token: d for d in descriptions.combine(rule, described)}
        methods["rule_based/same_tokens"] = gold.score(by_token, scored)
        methods["llm"] = gold.score({d.token: d for d in described}, scored)
        methods["combined"] = gold.score(combined, scored)
        improves = gold.improves(methods["rule_based/same_tokens"], methods["combined"])
        trusted = len(scored) >= MIN_GOLD_TOKENS and improves
    return GoldReport(methods, gold.score_by(by_token, tokens, lambda g: g.category), trusted)


def gold_metadata(report: GoldReport | None) -> dict:
    """The gold report as metadata: correct, vague, wrong and generic shares per method."""
    if report is None:
        return {"gold_set": "absent", "llm_trusted": False}
    methods = [{"method": name, **score.as_dict()} for name, score in report.methods.items()]
    categories = [{"category": name, **s.as_dict()} for name, s in report.categories.items()]
    return {
        "gold_rule_based": dg.MetadataValue.json(report.methods["rule_based"].as_dict()),
        "gold_by_method": md_table(pd.DataFrame(methods), rows=len(methods)),
        "gold_rule_based_by_category": md_table(pd.DataFrame(categories), rows=len(categories)),
        "llm_trusted": report.llm_trusted,
    }


def reviewed_descriptions(
    paths: PathsResource, variant: str, expected: dict[str, int], glossary: dict[str, str]
) -> tuple[list[descriptions.Description], list[descriptions.Description], GoldReport | None]:
    """Rule-based descriptions, combined with the LLM's if the gold set trusts it; reviewed.

    Both description assets write the reviewed file through this one function, so it is the same
    whichever ran last: initialisation reads it without knowing whether an LLM was used.
    """
    written = read_descriptions(llm_path(paths, variant))
    report = gold_report(paths, glossary, written)
    llm = written if report and report.llm_trusted else []
    ordered = sorted(expected.items(), key=lambda kv: kv[1])
    rule_based = descriptions.describe_tokens(ordered, glossary)
    reviewed = descriptions.review(descriptions.combine(rule_based, llm))
    write_reviewed(layout.reviewed_descriptions(paths, variant), reviewed)
    return rule_based, reviewed, report


def plot_methods(ax: object, before: dict[str, float], after: dict[str, float]) -> None:
    """Method shares of the rule-based descriptions beside those of the final ones."""
    ax.bar([m + " rules" for m in before], before.values())
    ax.bar([m + " final" for m in after], after.values())
    ax.tick_params(axis="x", rotation=45)


@dg.multi_asset(
    outs={
        "token_descriptions": dg.AssetOut(
            group_name=GROUP,
            kinds={"json", "duckdb"},
            code_version=CODE_VERSION,
            metadata={"partition_expr": "variant"},
            description="Reviewed English description per new token: dictionary and lexicon, "
            "Kiwi morphology, LLM output where the rules know nothing, review passes; "
            "scored on the gold set.",
        ),
        "description_validation": dg.AssetOut(
            group_name=GROUP,
            kinds={"duckdb"},
            code_version=CODE_VERSION,
            metadata={"partition_expr": "variant"},
            description="Validation metrics: one row per description check per materialization.",
        ),
    },
    deps=["tokenizer_variants", "medical_dictionary"],
    check_specs=check_specs("token_descriptions"),
    partitions_def=variant_partitions,
)
def token_descriptions(
    context: dg.AssetExecutionContext, config: DescriptionChecksConfig, paths: PathsResource
):
    variant = context.partition_key
    expected = expected_tokens(paths, variant)
    glossary, issues = load_glossary(paths)
    rule_based, reviewed, report = reviewed_descriptions(paths, variant, expected, glossary)
    results = validate(reviewed, expected, config, "token_descriptions")
    frame = pd.DataFrame([vars(d) for d in reviewed]).assign(variant=variant)
    before, after = (
        descriptions.method_breakdown(rule_based),
        descriptions.method_breakdown(reviewed),
    )
    yield dg.Output(
        frame,
        output_name="token_descriptions",
        metadata={
            "dagster/row_count": len(frame),
            "path": dg.MetadataValue.path(str(layout.reviewed_descriptions(paths, variant))),
            "methods_rule_based": md_counts(before, key="method", value="share"),
            "methods_final": md_counts(after, key="method", value="share"),
            "method_breakdown": md_plot(lambda ax: plot_methods(ax, before, after)),
            "generic_share": after["generic"],
            "llm_descriptions_used": sum(d.method == "llm" for d in reviewed),
            "unique_ratio": round(descriptions.unique_ratio(reviewed), 4),
            "glossary_terms": len(glossary),
            "dictionary_issues": md_counts(issues or {"none": 0}, key="issue"),
            **gold_metadata(report),
            "preview": md_table(frame),
        },
    )
    yield dg.Output(
        validation_frame(results, variant, context.run.run_id), output_name="description_validation"
    )
    yield from results


class LlmDescriberConfig(DescriptionChecksConfig):
    """The optional LLM describer: any local causal LM directory, default the embedded 270M."""

    model: str = ""
    """A directory in the model dir, `embedded:gemma3-270m` or a hub id; empty: the base model."""
    batch_size: int = 8
    checkpoint_every: int = 64
    max_new_tokens: int = 32
    limit: int = 0
    """Describe only the first N new tokens (0 = all); handy for trying a model out."""
    only_generic: bool = False
    """Describe only the tokens the rules describe generically (the only ones it may replace)."""

    @field_validator("model")
    @classmethod
    def _inside_model_dir(cls, model: str) -> str:
        """Absolute and ``..`` paths are refused before the run reads anything."""
        return relative_path(model)


def describer_source(
    model: str, paths: PathsResource, base_model: BaseModelResource
) -> core_base_model.BaseModelSource:
    """The describer's model: the base model, the embedded one, a model-dir directory or a hub id.

    A local directory is looked up through ``paths.model`` only, never relative to the working
    directory, so run config cannot point the describer at files outside the model directory.
    """
    if not model:
        return base_model.source()
    if model.startswith(core_base_model.EMBEDDED_PREFIX):
        return core_base_model.resolve(model, paths.model("base"))
    local = paths.model(model)
    if local.exists():
        return core_base_model.resolve(str(local), paths.model("base"))
    return core_base_model.hub_source(model)


@dg.asset(
    group_name=GROUP,
    kinds={"json", "pytorch", "duckdb"},
    code_version=CODE_VERSION,
    deps=["tokenizer_variants", "medical_dictionary"],
    metadata={"partition_expr": "variant"},
    check_specs=check_specs("llm_token_descriptions"),
    partitions_def=variant_partitions,
    pool="gpu",
    description="Optional: descriptions by a local causal LM (few-shot, dictionary context, on "
    "the GPU when there is one), checkpointed and resumable, fixed and checked, then combined "
    "into the reviewed descriptions.",
)
def llm_token_descriptions(
    context: dg.AssetExecutionContext,
    config: LlmDescriberConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
):
    from medtok_dagster.core.describer import describe_with_llm
    from medtok_dagster.core.training import compute_settings

    variant = context.partition_key
    expected = expected_tokens(paths, variant)
    glossary, _ = load_glossary(paths)
    tokens = sorted(expected.items(), key=lambda kv: kv[1])
    if config.only_generic:
        replaceable = {
            d.token
            for d in descriptions.describe_tokens(tokens, glossary)
            if d.method in descriptions.REPLACEABLE_BY_LLM
        }
        tokens = [t for t in tokens if t[0] in replaceable]
    tokens = tokens[: config.limit or None]
    source = describer_source(config.model, paths, base_model)
    device, dtype = compute_settings()
    model, tokenizer = (
        core_base_model.load_causal_lm(source, dtype=dtype).to(device),
        core_base_model.load_tokenizer(source),
    )
    checkpoint = paths.model("descriptions", variant, "llm_checkpoint.jsonl")
    settings = {
        "batch_size": config.batch_size,
        "checkpoint_every": config.checkpoint_every,
        "max_new_tokens": config.max_new_tokens,
        "progress": lambda done, total: context.log.info("described %d / %d tokens", done, total),
    }
    described = describe_with_llm(model, tokenizer, tokens, checkpoint, glossary, **settings)
    fixed = descriptions.fix(described)
    path = write_reviewed(llm_path(paths, variant), fixed)
    _, reviewed, report = reviewed_descriptions(paths, variant, expected, glossary)
    frame = pd.DataFrame([vars(d) for d in fixed]).assign(variant=variant)
    yield dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "path": dg.MetadataValue.path(str(path)),
            "model": source.name_or_path,
            "device": device,
            "checkpoint": dg.MetadataValue.path(str(checkpoint)),
            "llm_descriptions_used": sum(d.method == "llm" for d in reviewed),
            **gold_metadata(report),
            "preview": md_table(frame),
        },
    )
    yield from validate(fixed, dict(tokens), config, "llm_token_descriptions")
