"""trained_adapter through Dagster Pipes: metrics arrive, a killed run resumes from its checkpoint."""

import json
import os
import shutil
import signal
import threading
import time

import dagster as dg
import psutil
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.assets.training import trained_adapter
from medtok_dagster.core import embeddings as E
from medtok_dagster.core import training as T
from medtok_dagster.core.corpus import write_lines_parquet
from medtok_dagster.core.io import atomic_write_json
from medtok_dagster.resources import build_resources

PARTITION = dg.MultiPartitionKey({"variant": "ded_medical", "profile": "embedded"})
LINES = [
    "당뇨병 환자의 혈당 조절이 필요합니다.",
    "중환자실에서 심근경색 환자를 치료했다.",
    "급성 신우신염 환자는 발열이 있다.",
] * 40


def write_initialised(model_dir, tiny_gemma_dir, gemma_tokenizer, strategy: str) -> None:
    """The initialised adapter as `initialized_model` leaves it, rows initialised by ``strategy``."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(["▁당뇨병", "▁환자의", "▁혈당", "▁심근경색"])
    base_len = len(gemma_tokenizer)
    new_ids = list(range(base_len, len(tokenizer)))
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    E.resize_for(model, len(tokenizer))
    tokens = [E.NewToken(tokenizer.convert_ids_to_tokens(i), i, "ngram") for i in new_ids]
    E.apply_init(model, E.plan_init(tokens, strategy, gemma_tokenizer, base_len), base_len)
    peft_model = T.attach_lora(model, T.profile("embedded"), new_ids, "trainable_tokens")
    init_dir = model_dir / "raw_lora_added" / "embedded" / "ded_medical"
    shutil.rmtree(init_dir, ignore_errors=True)
    init_dir.mkdir(parents=True)
    T.save_adapter(peft_model, tokenizer, init_dir, new_ids, "trainable_tokens")
    atomic_write_json(
        init_dir / "init_info.json",
        {
            "variant": "ded_medical",
            "profile": T.profile("embedded").as_dict(),
            "base_model": str(tiny_gemma_dir),
            "strategy": strategy,
            "embedding_mode": "trainable_tokens",
            "new_tokens": len(new_ids),
            "base_vocab_size": base_len,
        },
    )


@pytest.fixture
def prepared(data_dir, model_dir, tiny_gemma_dir, gemma_tokenizer):
    """An initialised adapter and a medical corpus on disk, as upstream assets would leave them."""
    shutil.rmtree(data_dir / "01_raw" / "00_korean")
    write_initialised(model_dir, tiny_gemma_dir, gemma_tokenizer, "subtoken_mean")
    write_lines_parquet(LINES, model_dir / "corpora" / "medical_corpus.parquet")
    return build_resources(str(data_dir), str(model_dir), str(tiny_gemma_dir)), model_dir


def run(resources, steps, raise_on_error=True, seed=0):
    config = {
        "ops": {
            "trained_adapter": {
                "config": {
                    "max_steps": steps,
                    "save_steps": 2,
                    "per_device_batch": 2,
                    "grad_accum": 1,
                    "max_seq_len": 32,
                    "medical_share": 1.0,
                    "heldout_texts": 8,
                    "seed": seed,
                }
            }
        }
    }
    return dg.materialize(
        [trained_adapter],
        partition_key=PARTITION,
        resources=resources,
        run_config=config,
        raise_on_error=raise_on_error,
    )


def training_processes():
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "medtok_dagster.pipes.train_adapter" in " ".join(p.info["cmdline"] or [])
    ]


def test_pipes_reports_metrics_and_writes_a_small_adapter(prepared):
    resources, model_dir = prepared
    result = run(resources, steps=4)
    meta = result.asset_materializations_for_node("trained_adapter")[0].metadata
    assert meta["steps"].value == 4
    assert {
        "exam_questions_bits_per_char_base",
        "exam_questions_bits_per_char_initialised",
        "exam_questions_bits_per_char_trained",
        "tokens_per_second",
        "peak_memory_mb",
        "adapter_mb",
    } <= set(meta)
    out = model_dir / "trained" / "embedded" / "ded_medical"
    assert json.loads((out / "metrics.json").read_text())["adapter_mb"] < 5
    assert "base_model:" in (out / "README.md").read_text()
    assert meta["source_shares"].value == "medical 1, general 0"
    assert "medical 100% (medical_corpus.parquet)" in (out / "README.md").read_text()
    assert len(json.loads((out / "loss_curve.json").read_text())) == 4


def killed_run(resources, checkpoints, steps=40):
    """A run killed (SIGKILL) as soon as its first checkpoint is on disk."""
    killer_done = threading.Event()

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(
            checkpoints.glob("checkpoint-*/trainer_state.json")
        ):
            time.sleep(0.2)
        for process in training_processes():
            os.kill(process.pid, signal.SIGKILL)
        killer_done.set()

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    result = run(resources, steps=steps, raise_on_error=False)
    killer.join()
    assert killer_done.is_set() and not result.success


def test_killed_training_resumes_from_last_checkpoint(prepared):
    resources, model_dir = prepared
    checkpoints = model_dir / "checkpoints" / "embedded" / "ded_medical"
    killed_run(resources, checkpoints)
    assert not (model_dir / "trained" / "embedded" / "ded_medical").exists()
    second = run(resources, steps=40)
    meta = second.asset_materializations_for_node("trained_adapter")[0].metadata
    assert meta["resumed_from"].value.startswith(str(checkpoints)), meta["discarded_checkpoints"]
    assert meta["steps"].value == 40 and meta["steps_this_run"].value < 40
    assert meta["discarded_checkpoints"].value == ""
    assert not checkpoints.exists(), "a finished run leaves no checkpoint to resume"


def test_reinitialised_adapter_is_trained_from_the_start(prepared, tiny_gemma_dir, gemma_tokenizer):
    """initialized_model re-materialised with another strategy: no old LoRA weights are resumed."""
    resources, model_dir = prepared
    first = run(resources, steps=4)
    write_initialised(model_dir, tiny_gemma_dir, gemma_tokenizer, "mean")
    second = run(resources, steps=4)
    before, after = (
        r.asset_materializations_for_node("trained_adapter")[0].metadata for r in (first, second)
    )
    assert after["steps_this_run"].value == 4 and after["resumed_from"].value == ""
    assert after["fingerprint"].value != before["fingerprint"].value


def test_checkpoint_of_another_plan_is_discarded_not_resumed(prepared):
    resources, model_dir = prepared
    checkpoints = model_dir / "checkpoints" / "embedded" / "ded_medical"
    killed_run(resources, checkpoints)
    second = run(resources, steps=40, seed=1)
    meta = second.asset_materializations_for_node("trained_adapter")[0].metadata
    assert meta["resumed_from"].value == "" and meta["steps_this_run"].value == 40
    assert "seed: 0 → 1" in meta["discarded_checkpoints"].value
