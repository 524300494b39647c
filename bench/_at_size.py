"""Shared pieces of the at-size benchmark and the GPU check: model shapes, stage processes, sizes.

Every stage runs in its own Python process so that its seconds, peak resident memory (the process
tree, sampled, and the largest single process from ``wait4``) and peak GPU memory are its own. A
stage process materializes real Dagster assets against one instance under the work directory, with
the run config the parent wrote into a spec file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EMBEDDED_CACHE = REPO / "model" / "base"
"""Where the project converts the embedded GGUF (its tokenizer is the real Gemma 3 tokenizer)."""
MEDGEMMA_VOCAB_ROWS = 262_208
IMAGE_SOFT_TOKEN = "<image_soft_token>"
BUILD_MARKER = "medtok_at_size.json"
MODEL_STAGES = (
    "distilled_embeddings",
    "initialized_model",
    "trained_adapter",
    "merged_model",
    "model_evaluation",
)
GIB = 2**30


# --- model shapes ----------------------------------------------------------------------------


def text_settings(shape: str) -> dict[str, Any]:
    """Gemma 3 text settings: MedGemma 4B's (google/medgemma-4b-it config.json) or a 2-layer toy."""
    if shape == "4b":
        return {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 1024,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        }
    if shape == "tiny":
        return {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "max_position_embeddings": 512,
            "sliding_window": 64,
        }
    raise ValueError(f"unknown shape {shape!r}; choose 4b or tiny")


def vision_settings(shape: str) -> dict[str, Any]:
    """SigLIP so400m as in MedGemma 4B (896 px, patch 14, no pooling head), or a 1-layer toy."""
    if shape == "4b":
        return {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "vision_use_head": False,
        }
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "vision_use_head": False,
    }


def gemma3_config(shape: str, tokenizer: Any) -> Any:
    """The image-text ``Gemma3Config`` of ``shape``, with the real tokenizer's special ids."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=MEDGEMMA_VOCAB_ROWS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **text_settings(shape),
    )
    return Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**vision_settings(shape)),
        mm_tokens_per_image=256 if shape == "4b" else 4,
        image_token_index=262144,
        boi_token_index=255999,
        eoi_token_index=256000,
        tie_word_embeddings=True,
    )


def medgemma_tokenizer(target: Path) -> Any:
    """The real Gemma 3 tokenizer (from the embedded GGUF) plus ``<image_soft_token>``: 262,145 long, as MedGemma's."""
    from transformers import AutoTokenizer

    from medtok_dagster.core.base_model import ensure_embedded

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded(EMBEDDED_CACHE, with_model=False))
    if IMAGE_SOFT_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_SOFT_TOKEN], special_tokens=True)
    tokenizer.save_pretrained(target)
    return tokenizer


def build_key(shape: str, seed: int) -> str:
    return hashlib.sha256(
        json.dumps({"shape": shape, "text": text_settings(shape), "seed": seed}).encode()
    ).hexdigest()[:12]


def build_model(target: Path, shape: str, seed: int = 0) -> dict[str, Any]:
    """A random-weight MedGemma-shaped ``Gemma3ForConditionalGeneration`` saved in bf16 with the tokenizer.

    Built with bf16 as torch's default dtype, so no fp32 copy of the weights ever exists (4B: 8 GiB
    of weights, not 17). transformers' own initialisation gives the random values (normal, std
    0.02; norms at their identity), so the model is numerically sane. A directory already built
    with the same shape and seed is reused.
    """
    import torch
    from transformers import Gemma3ForConditionalGeneration

    marker = target / BUILD_MARKER
    key = build_key(shape, seed)
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return json.loads(marker.read_text())
    if target.exists():
        shutil.rmtree(target)
    staging = target.with_name(target.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = medgemma_tokenizer(staging)
    config = gemma3_config(shape, tokenizer)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = torch.bfloat16
    embedding = model.get_input_embeddings().weight
    info = {
        "key": key,
        "shape": shape,
        "architecture": type(model).__name__,
        "dtype": str(embedding.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": embedding.numel(),
        "vocab_rows": embedding.shape[0],
        "tokenizer_length": len(tokenizer),
        "text": text_settings(shape),
        "vision": vision_settings(shape),
    }
    model.save_pretrained(staging, safe_serialization=True)
    del model
    info["bytes"] = dir_size(staging)
    (staging / BUILD_MARKER).write_text(json.dumps(info, indent=2))
    staging.rename(target)
    return info


# --- sizes ---------------------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    """Bytes of the files under ``path`` (a file's own size; 0 when absent); symlinks are not followed."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def fresh_data_copy(target: Path) -> Path:
    """A private copy of the shipped sample data, without outputs a local run wrote into it."""
    generated = ("special_chars_report.json", "dictionary_terms.txt*", "medgemma_*")
    shutil.copytree(
        REPO / "data",
        target,
        ignore=shutil.ignore_patterns("scripts", "README.md", *generated),
    )
    return target


# --- stage processes -----------------------------------------------------------------------------


class TreeSampler:
    """Samples the summed RSS of a process and its descendants (what the machine must hold at once)."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StageFailed(RuntimeError):
    """A stage process exited non-zero: its measurements so far and the tail of its log."""

    def __init__(self, row: dict[str, Any], tail: str):
        super().__init__(f"stage {row['stage']} failed ({row['error']}); log {row['log']}:\n{tail}")
        self.row, self.tail = row, tail


def child_env() -> dict[str, str]:
    """The environment of a stage process: the repository importable without an install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Nothing is downloaded: every model is a local directory or the embedded GGUF.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def run_stage(name: str, argv: list[str], log_dir: Path, result_file: Path) -> dict[str, Any]:
    """Run one stage process; seconds, peak tree RSS, largest process RSS and what the stage wrote."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    result_file.unlink(missing_ok=True)
    print(f"[at-size] {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
        with TreeSampler(proc.pid) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    row: dict[str, Any] = {
        "stage": name,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(sampler.peak / GIB, 2),
        "max_process_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),
        "log": str(log_path),
    }
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-6000:]
        row["error"] = f"exit {proc.returncode}"
        raise StageFailed(row, tail)
    if result_file.is_file():
        row.update(json.loads(result_file.read_text()))
    print(
        f"[at-size] {name}: {row['seconds']} s, peak RSS {row['peak_rss_gib']} GiB",
        file=sys.stderr,
        flush=True,
    )
    return row


# --- inside a stage process ----------------------------------------------------------------------


SUMMARY_TYPES = (int, float, bool, str)


def metadata_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """Scalar metadata of a materialization (markdown tables and plots left out)."""
    summary = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, SUMMARY_TYPES) and not (isinstance(raw, str) and len(raw) > 200):
            summary[key] = raw
    return summary


def gpu_peak_bytes() -> int | None:
    """This process's peak allocated CUDA memory, or None without a GPU."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def instance_for(spec: dict[str, Any]) -> Any:
    import dagster as dg

    home = Path(spec["dagster_home"])
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def materialize_upstream(spec: dict[str, Any]) -> dict[str, Any]:
    """Everything the model stages read (corpora, vocabularies, the variant's tokenizer, descriptions)."""
    import dagster as dg

    from medtok_dagster.core.variants import VARIANTS
    from medtok_dagster.definitions import OPTIONAL_ASSETS, build_definitions
    from medtok_dagster.demo import plan_phases

    defs = build_definitions(spec["data_dir"], spec["model_dir"], spec["base_model"])
    graph = defs.resolve_asset_graph()
    targets = [dg.AssetKey(name) for name in MODEL_STAGES]
    needed = dg.AssetSelection.assets(*targets).upstream().resolve(graph) - set(targets)
    skip = {k.to_user_string() for k in graph.get_all_asset_keys() if k not in needed}
    observations, phases = plan_phases(
        defs, skip | OPTIONAL_ASSETS, {"variant": spec["variant"], "profile": spec["profile"]}
    )
    assets = [*defs.assets, *(defs.asset_checks or [])]
    config = spec["run_config"]
    materialized, checks = [], []
    with instance_for(spec) as instance:
        for phase in observations:
            for partition in phase.partition_keys:
                dg.materialize(
                    assets,
                    selection=phase.keys,
                    partition_key=partition,
                    instance=instance,
                    resources=defs.resources,
                )
        for phase in phases:
            for partition in phase.partition_keys:
                if partition in VARIANTS and partition != spec["variant"]:
                    continue
                selection = dg.AssetSelection.assets(
                    *phase.keys
                ) | dg.AssetSelection.checks_for_assets(*phase.keys)
                ops = {k: v for k, v in config.items() if dg.AssetKey(k) in phase.keys}
                result = dg.materialize(
                    assets,
                    selection=selection,
                    partition_key=partition,
                    instance=instance,
                    resources=defs.resources,
                    run_config={"ops": ops},
                )
                for event in result.get_asset_materialization_events():
                    key = event.step_materialization_data.materialization.asset_key
                    materialized.append(
                        key.to_user_string() + (f"[{partition}]" if partition else "")
                    )
                checks += [
                    f"{c.asset_key.to_user_string()}:{c.check_name}:{'pass' if c.passed else 'FAIL'}"
                    for c in result.get_asset_check_evaluations()
                ]
    return {"materialized": materialized, "checks": checks}


def materialize_stage(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """One model stage of the variant × profile partition, with its checks, as `make ui` would run it."""
    import dagster as dg

    from medtok_dagster.definitions import build_definitions

    defs = build_definitions(spec["data_dir"], spec["model_dir"], spec["base_model"])
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(name)
    partitions = graph.get(key).partitions_def
    partition = (
        dg.MultiPartitionKey({"variant": spec["variant"], "profile": spec["profile"]})
        if isinstance(partitions, dg.MultiPartitionsDefinition)
        else spec["variant"]
    )
    ops = {name: spec["run_config"][name]} if name in spec["run_config"] else {}
    with instance_for(spec) as instance:
        result = dg.materialize(
            [*defs.assets, *(defs.asset_checks or [])],
            selection=dg.AssetSelection.assets(key) | dg.AssetSelection.checks_for_assets(key),
            partition_key=partition,
            instance=instance,
            resources=defs.resources,
            run_config={"ops": ops},
        )
    metadata: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        metadata.update(metadata_summary(event.step_materialization_data.materialization.metadata))
    checks = {
        c.check_name: {
            "passed": c.passed,
            "severity": c.severity.value,
            **metadata_summary(c.metadata),
        }
        for c in result.get_asset_check_evaluations()
    }
    return {"metadata": metadata, "checks": checks}


def plain_load(merged: Path) -> dict[str, Any]:
    """The merged directory loaded with plain transformers (no medtok, no peft) and run once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(merged, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=False).to(device).eval()
    rows = model.get_input_embeddings().weight.shape[0]
    ids = tokenizer("당뇨병 환자의 혈당 조절 목표는", return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return {
        "architecture": type(model).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_rows": rows,
        "tokenizer_length": len(tokenizer),
        "has_vocab_rows": rows >= len(tokenizer),
        "new_ids_in_sample": int((ids >= 262_145).sum()),
        "logits_width": logits.shape[-1],
        "logits_finite": bool(torch.isfinite(logits.float()).all()),
    }


def stage_main(stage: str, spec_file: Path, result_file: Path) -> None:
    """Entry of a stage process: do the stage, write what it found (plus peak GPU memory) as JSON."""
    spec = json.loads(spec_file.read_text())
    started = time.monotonic()
    if stage == "build_model":
        result: dict[str, Any] = {"model": build_model(Path(spec["base_model"]), spec["shape"])}
    elif stage == "upstream":
        result = materialize_upstream(spec)
    elif stage == "plain_load":
        result = {"load": plain_load(Path(spec["merged_dir"]))}
    elif stage in MODEL_STAGES:
        result = materialize_stage(spec, stage)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    result["inner_seconds"] = round(time.monotonic() - started, 1)
    import torch

    result["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    result["torch_threads"] = torch.get_num_threads()
    peak = gpu_peak_bytes()
    if peak is not None:
        result["peak_gpu_gib"] = round(peak / GIB, 2)
        child_peak_mb = result.get("metadata", {}).get("peak_memory_mb")
        if stage == "trained_adapter" and isinstance(child_peak_mb, (int, float)):
            result["peak_gpu_gib"] = max(result["peak_gpu_gib"], round(child_peak_mb / 1024, 2))
    result_file.write_text(json.dumps(result, indent=2, default=str))
