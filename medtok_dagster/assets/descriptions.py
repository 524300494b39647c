"""Token descriptions per variant, validated by blocking checks before any model is initialised."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import field_validator

from medtok_dagster.assets.tokenizers import variant_dir, variant_partitions
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import descriptions, dictionary
from medtok_dagster.core.io import atomic_write_json, read_json
from medtok_dagster.core.tokenizer_build import new_token_ids
from medtok_dagster.metadata import md_counts, md_plot, md_table
from medtok_dagster.resources import MEDICAL_DICTIONARY, TOKENIZER_DATA_DIR, BaseModelResource, PathsResource, relative_path

GROUP = "descriptions"
CODE_VERSION = "1"
BLOCKING_CHECKS = ("no_hangul", "no_quotes", "no_parentheses", "clean_spaces", "not_empty", "every_new_token_described_once")
WARNING_CHECKS = ("unique_ratio", "generic_fraction")
REVIEWED_FILE = "reviewed_new_token_description.json"


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
    directory = variant_dir(paths, variant)
    mapping = read_json(directory / "token_mapping.json")
    tokenizer = core_base_model.load_local_tokenizer(directory)
    return new_token_ids(tokenizer, mapping["original_vocab_size"])


def _offenders(violations: list[descriptions.Violation]) -> dg.MetadataValue:
    frame = pd.DataFrame([vars(v) for v in violations[:20]], columns=["token", "token_id", "problem"])
    return md_table(frame, rows=20)


def validate(descs: list[descriptions.Description], expected: dict[str, int], config: DescriptionChecksConfig, asset: str) -> list[dg.AssetCheckResult]:
    """All checks on a description set; failures name the first offending tokens."""
    results = []
    for name, violations in descriptions.text_violations(descs).items():
        results.append(dg.AssetCheckResult(check_name=name, asset_key=asset, passed=not violations,
                                           metadata={"violations": len(violations), "offenders": _offenders(violations)}))
    coverage = descriptions.coverage_violations(descs, expected)
    results.append(dg.AssetCheckResult(check_name="every_new_token_described_once", asset_key=asset, passed=not coverage,
                                       metadata={"violations": len(coverage), "expected_tokens": len(expected), "offenders": _offenders(coverage)}))
    ratio = descriptions.unique_ratio(descs)
    generic = descriptions.method_breakdown(descs)["generic"]
    results.append(dg.AssetCheckResult(check_name="unique_ratio", asset_key=asset, passed=ratio >= config.min_unique_ratio,
                                       severity=dg.AssetCheckSeverity.WARN, metadata={"unique_ratio": ratio, "threshold": config.min_unique_ratio}))
    generic_tokens = [descriptions.Violation(d.token, d.token_id, "generic") for d in descs if d.method == "generic"]
    results.append(dg.AssetCheckResult(check_name="generic_fraction", asset_key=asset, passed=generic <= config.max_generic_fraction,
                                       severity=dg.AssetCheckSeverity.WARN,
                                       metadata={"generic_fraction": generic, "threshold": config.max_generic_fraction, "offenders": _offenders(generic_tokens)}))
    return results


def validation_frame(results: list[dg.AssetCheckResult], variant: str, run_id: str) -> pd.DataFrame:
    """Check results as validation-metric rows (one per check per materialization)."""
    now = datetime.now(timezone.utc).isoformat()
    return pd.DataFrame(
        [{
            "variant": variant, "check": r.check_name, "passed": r.passed, "severity": r.severity.value,
            "value": float(next((m.value for k, m in r.metadata.items() if k in ("violations", "unique_ratio", "generic_fraction")), 0)),
            "run_id": run_id, "checked_at": now,
        } for r in results]
    )


def write_reviewed(path: Path, descs: list[descriptions.Description]) -> Path:
    """The prototype's reviewed JSON: [{token, token_id, description, method}]."""
    return atomic_write_json(path, [vars(d) for d in descs])


@dg.multi_asset(
    outs={
        "token_descriptions": dg.AssetOut(group_name=GROUP, kinds={"json", "duckdb"}, code_version=CODE_VERSION, metadata={"partition_expr": "variant"},
                                          description="Reviewed English description per new token (dictionary → morpheme rules → review passes)."),
        "description_validation": dg.AssetOut(group_name=GROUP, kinds={"duckdb"}, code_version=CODE_VERSION, metadata={"partition_expr": "variant"},
                                              description="Validation metrics: one row per description check per materialization."),
    },
    deps=["tokenizer_variants", "medical_dictionary"],
    check_specs=check_specs("token_descriptions"),
    partitions_def=variant_partitions,
)
def token_descriptions(context: dg.AssetExecutionContext, config: DescriptionChecksConfig, paths: PathsResource):
    variant = context.partition_key
    expected = expected_tokens(paths, variant)
    loaded = dictionary.load_dictionary(paths.data(MEDICAL_DICTIONARY), lenient=True)
    glossary, issues = descriptions.build_glossary((e.term, e.definition) for e in loaded.entries)
    initial = descriptions.describe_tokens(sorted(expected.items(), key=lambda kv: kv[1]), glossary)
    reviewed = descriptions.review(initial)
    path = write_reviewed(paths.data(TOKENIZER_DATA_DIR, f"medgemma_{variant}", REVIEWED_FILE), reviewed)
    results = validate(reviewed, expected, config, "token_descriptions")
    frame = pd.DataFrame([vars(d) for d in reviewed]).assign(variant=variant)
    before, after = descriptions.method_breakdown(initial), descriptions.method_breakdown(reviewed)
    yield dg.Output(frame, output_name="token_descriptions", metadata={
        "dagster/row_count": len(frame),
        "path": dg.MetadataValue.path(str(path)),
        "methods_before_review": md_counts(before, key="method", value="share"),
        "methods_after_review": md_counts(after, key="method", value="share"),
        "method_breakdown": md_plot(lambda ax: (ax.bar([m + " before" for m in before], before.values()), ax.bar([m + " after" for m in after], after.values()), ax.tick_params(axis="x", rotation=45))),
        "unique_ratio": round(descriptions.unique_ratio(reviewed), 4),
        "glossary_terms": len(glossary),
        "dictionary_issues": md_counts(dict(issues) or {"none": 0}, key="issue"),
        "preview": md_table(frame),
    })
    yield dg.Output(validation_frame(results, variant, context.run.run_id), output_name="description_validation")
    yield from results


class LlmDescriberConfig(DescriptionChecksConfig):
    """The optional LLM describer: any local causal LM directory, default the embedded Gemma 3 270M."""

    model: str = ""
    """A model directory relative to the model dir, `embedded:gemma3-270m` or a hub id; empty means the configured base model."""
    batch_size: int = 8
    checkpoint_every: int = 64
    max_new_tokens: int = 32
    limit: int = 0
    """Describe only the first N new tokens (0 = all); handy for trying a model out."""

    @field_validator("model")
    @classmethod
    def _inside_model_dir(cls, model: str) -> str:
        """Absolute and ``..`` paths are refused before the run reads anything."""
        return relative_path(model)


def describer_source(model: str, paths: PathsResource, base_model: BaseModelResource) -> core_base_model.BaseModelSource:
    """The describer's model: the base model, the embedded one, a directory inside the model dir, or a hub id.

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
    deps=["tokenizer_variants"],
    metadata={"partition_expr": "variant"},
    check_specs=check_specs("llm_token_descriptions"),
    partitions_def=variant_partitions,
    pool="gpu",
    description="Optional: descriptions generated by a local causal LM, checkpointed and resumable, then fixed and checked.",
)
def llm_token_descriptions(context: dg.AssetExecutionContext, config: LlmDescriberConfig, paths: PathsResource, base_model: BaseModelResource):
    from medtok_dagster.core.describer import describe_with_llm

    variant = context.partition_key
    expected = expected_tokens(paths, variant)
    tokens = sorted(expected.items(), key=lambda kv: kv[1])[: config.limit or None]
    source = describer_source(config.model, paths, base_model)
    model, tokenizer = core_base_model.load_causal_lm(source), core_base_model.load_tokenizer(source)
    checkpoint = paths.model("descriptions", variant, "llm_checkpoint.jsonl")
    described = describe_with_llm(
        model, tokenizer, tokens, checkpoint, batch_size=config.batch_size, checkpoint_every=config.checkpoint_every,
        max_new_tokens=config.max_new_tokens, progress=lambda done, total: context.log.info("described %d / %d tokens", done, total),
    )
    fixed = descriptions.fix(described)
    path = write_reviewed(paths.data(TOKENIZER_DATA_DIR, f"medgemma_{variant}", "llm_token_descriptions.json"), fixed)
    frame = pd.DataFrame([vars(d) for d in fixed]).assign(variant=variant)
    yield dg.Output(frame, metadata={
        "dagster/row_count": len(frame), "path": dg.MetadataValue.path(str(path)), "model": source.name_or_path,
        "checkpoint": dg.MetadataValue.path(str(checkpoint)), "preview": md_table(frame),
    })
    yield from validate(fixed, dict(tokens), config, "llm_token_descriptions")
