"""Phase-0 training as its own process, launched by the `trained_adapter` asset through Dagster Pipes.

Runs unchanged under `PipesSubprocessClient` locally, or under a Kubernetes/Databricks Pipes client
on a GPU cluster: everything it needs arrives in the Pipes extras (a serialised ``TrainPlan``), and
everything it reports (loss per step, held-out loss, throughput, memory, sizes) goes back through
Pipes. ``transformers.Trainer`` is used rather than trl's SFTTrainer, which crashes on models with
peft ``trainable_token_indices`` (trl 1.16).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch
from dagster_pipes import PipesContext, open_dagster_pipes
from transformers import TrainerCallback

from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import lm_metrics, training
from medtok_dagster.core.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from medtok_dagster.core.training import HELDOUT_SCORES, INIT_INFO, LOSS_CURVE, METRICS


class PipesLogCallback(TrainerCallback):
    """Forwards every training log line (step, loss, lr, grad norm) to Dagster as it happens."""

    def __init__(self, pipes: PipesContext, curve: list[dict[str, Any]]):
        self.pipes = pipes
        self.curve = curve

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            row = {
                "step": state.global_step,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
            }
            self.curve.append(row)
            self.pipes.report_custom_message(row)
            self.pipes.log.info(f"step {row['step']}: loss {row['loss']:.4f}")


def peak_memory_mb() -> float:
    """Peak GPU memory if training ran on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_table(
    model: Any, tokenizer: Any, texts: dict[str, list[str]], stage: str, source: Any
) -> list[dict[str, Any]]:
    """Fair bits/char of one model and tokenizer per text type (every character, from ``<bos>``).

    Scored in the inference precision, as ``model_evaluation`` scores, on a copy while the model
    still trains in fp32: on a CPU with native bf16 about four times faster. A quantized model is
    scored as it is (its linear layers keep their own precision).
    """
    if not training.quantized_linear_count(model):
        model = training.in_precision(model, training.inference_settings(source)[1], keep=True)
    return [
        {
            "stage": stage,
            "text_type": text_type,
            **lm_metrics.score_texts(model, tokenizer, items).as_row(),
        }
        for text_type, items in texts.items()
    ]


def adapter_card(
    plan: training.TrainPlan,
    info: dict[str, Any],
    scores: list[dict[str, Any]],
    summary: dict[str, Any],
) -> str:
    """README.md for the adapter: what it is, its held-out numbers beside the base, and a load snippet that runs."""
    table = "\n".join(
        f"| {t} | {by[('base', t)]:.3f} | {by[('initialised', t)]:.3f} | {by[('trained', t)]:.3f} |"
        for by in [{(r["stage"], r["text_type"]): r["bits_per_char"] for r in scores}]
        for t in plan.heldout_texts
    )
    rows_snippet = (
        f"""rows = load_file(f"{{adapter_dir}}/{training.NEW_ROWS_FILE}")["input"]
with torch.no_grad():
    base.get_input_embeddings().weight[{info["base_vocab_size"]} : {info["base_vocab_size"]} + len(rows)] = rows
"""
        if info["embedding_mode"] == "frozen"
        else ""
    )
    training_data = "; ".join(
        f"{name} {plan.source_shares.get(name, 0):.0%} ({', '.join(Path(f).name for f in files)})"
        for name, files in plan.train_sources.items()
    )
    return f"""---
library_name: peft
base_model: {info["base_model"]}
tags: [medtok, korean, medical, lora]
---
# medtok adapter: {info["variant"]} × {plan.profile}

Korean medical vocabulary extension of `{info["base_model"]}`: {info["new_tokens"]} new tokens
(variant `{info["variant"]}`), rows initialised with `{info["strategy"]}`, trained with LoRA
(r={info["profile"]["r"]}, alpha={info["profile"]["alpha"]}) and embedding mode `{info["embedding_mode"]}`.
For serving, use the `merged_model` asset: the same weights merged into one plain directory.

## Training data
Phase-0 plain Korean text, every block starting with `<bos>`; share of blocks by source:
{training_data}.

## Held-out bits per character (lower is better; every character scored, from `<bos>`)
| text | base model | initialised | trained |
|---|---|---|---|
{table}

{summary["steps"]} steps, {summary["tokens_per_second"]:.0f} tokens/s, peak memory {summary["peak_memory_mb"]:.0f} MB.

## Load (transformers + peft)
```python
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

adapter_dir = "{plan.output_dir}"
tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
base = AutoModelForCausalLM.from_pretrained("{plan.base_model}")
rows_now = base.get_input_embeddings().weight.shape[0]
base.resize_token_embeddings(max(len(tokenizer), rows_now), mean_resizing=False)
{rows_snippet}model = PeftModel.from_pretrained(base, adapter_dir)
inputs = tokenizer("당뇨병 환자의 혈당", return_tensors="pt")
print(model(**inputs).logits.shape)
```
"""


def start_from(
    pipes: PipesContext, plan: training.TrainPlan, lora: training.LoraProfile, source: Any
) -> tuple[training.Resume, str]:
    """The checkpoint to resume (only one trained from these very inputs) and the inputs' fingerprint."""
    inputs = training.training_inputs(plan, lora, core_base_model.identity(source))
    resume = training.prepare_checkpoints(Path(plan.checkpoint_dir), inputs)
    if resume.discarded:
        pipes.log.warning(
            f"discarded checkpoints in {plan.checkpoint_dir}: {resume.discarded}; training from the start"
        )
    pipes.log.info(
        f"resuming from {resume.checkpoint}"
        if resume.checkpoint
        else "starting from the initialised adapter"
    )
    return resume, training.fingerprint(inputs)


def run(pipes: PipesContext) -> None:
    plan = training.TrainPlan(**pipes.get_extra("plan"))
    lora = training.profile(plan.profile)
    init_dir = Path(plan.init_dir)
    info = read_json(init_dir / INIT_INFO)
    tokenizer = core_base_model.load_local_tokenizer(init_dir)
    new_ids = sorted(i for i in tokenizer.get_vocab().values() if i >= info["base_vocab_size"])
    source = core_base_model.BaseModelSource(plan.base_model, plan.base_model_kind, plan.base_model)
    training.check_saved_adapter(init_dir, source)
    resume, key = start_from(pipes, plan, lora, source)
    base = training.load_base(source, lora, for_training=True)
    scores = score_table(
        base, core_base_model.load_tokenizer(source), plan.heldout_texts, "base", source
    )
    model = training.load_adapter(base, init_dir, len(tokenizer), new_ids, is_trainable=True)
    scores += score_table(model, tokenizer, plan.heldout_texts, "initialised", source)
    block = plan.max_seq_len or lora.max_seq_len
    curve: list[dict[str, Any]] = []
    trainer = training.phase0_trainer(
        model, tokenizer, plan, lora, callbacks=[PipesLogCallback(pipes, curve)]
    )
    args, dataset = trainer.args, trainer.train_dataset
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume.checkpoint)
    seconds = time.monotonic() - started
    scores += score_table(model, tokenizer, plan.heldout_texts, "trained", source)
    steps_run = trainer.state.global_step - resume.step
    summary: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "steps_this_run": steps_run,
        "resumed_from": resume.checkpoint or "",
        "resumed_from_step": resume.step,
        "discarded_checkpoints": resume.discarded,
        "fingerprint": key,
        "train_loss": round(output.training_loss, 4),
        "tokens_per_second": round(
            steps_run
            * args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * block
            / max(seconds, 1e-9),
            1,
        ),
        "peak_memory_mb": round(peak_memory_mb()),
        "train_blocks": len(dataset),
        "source_shares": ", ".join(f"{k} {v:g}" for k, v in plan.source_shares.items()),
        "block_tokens": block,
        "quantization": lora.quantization or "none",
        "quantized_linear_modules": training.quantized_linear_count(model),
        "lora_modules": training.lora_module_count(model),
        "vision_lora_modules": training.lora_module_count(model, training.NON_LANGUAGE_MODULES),
    }
    by = {(r["stage"], r["text_type"]): r["bits_per_char"] for r in scores}
    for text_type in plan.heldout_texts:
        for stage in ("base", "initialised", "trained"):
            summary[f"{text_type}_bits_per_char_{stage}"] = by[(stage, text_type)]
        summary[f"{text_type}_trained_vs_base"] = round(
            by[("trained", text_type)] / by[("base", text_type)] - 1, 4
        )
    with atomic_dir(Path(plan.output_dir)) as staging:
        sizes = training.save_adapter(model, tokenizer, staging, new_ids, info["embedding_mode"])
        summary["adapter_mb"] = round((staging / training.ADAPTER_WEIGHTS).stat().st_size / 1e6, 1)
        summary["adapter_dir_mb"] = round(sizes["adapter_bytes"] / 1e6, 1)
        history = [row for row in trainer.state.log_history if "loss" in row]
        atomic_write_json(
            staging / LOSS_CURVE,
            [
                {
                    "step": r["step"],
                    "loss": r["loss"],
                    "learning_rate": r.get("learning_rate"),
                    "grad_norm": r.get("grad_norm"),
                }
                for r in history
            ],
        )
        atomic_write_json(staging / HELDOUT_SCORES, scores)
        atomic_write_json(staging / METRICS, summary)
        atomic_write_json(staging / INIT_INFO, info)
        atomic_write_text(staging / "README.md", adapter_card(plan, info, scores, summary))
    training.clear_checkpoints(Path(plan.checkpoint_dir))
    pipes.report_asset_materialization(
        metadata={k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
    )


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
