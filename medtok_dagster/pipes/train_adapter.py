"""Phase-0 training as its own process, launched by the `trained_adapter` asset through Dagster Pipes.

Runs unchanged under `PipesSubprocessClient` locally, or under a Kubernetes/Databricks Pipes client
on a GPU cluster: everything it needs arrives in the Pipes extras (a serialised ``TrainPlan``), and
everything it reports (loss per step, held-out loss, throughput, memory, sizes) goes back through
Pipes. ``transformers.Trainer`` is used rather than trl's SFTTrainer, which crashes on models with
peft ``trainable_token_indices`` (trl 1.16).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from dagster_pipes import PipesContext, open_dagster_pipes
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import metrics, training
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.core.io import atomic_dir, atomic_write_json, atomic_write_text


class PipesLogCallback(TrainerCallback):
    """Forwards every training log line (step, loss, lr, grad norm) to Dagster as it happens."""

    def __init__(self, pipes: PipesContext, curve: list[dict[str, Any]]):
        self.pipes = pipes
        self.curve = curve

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            row = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
            self.curve.append(row)
            self.pipes.report_custom_message(row)
            self.pipes.log.info(f"step {row['step']}: loss {row['loss']:.4f}")


def peak_memory_mb() -> float:
    """Peak GPU memory if training ran on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_card(plan: training.TrainPlan, info: dict[str, Any], summary: dict[str, Any]) -> str:
    """README.md for the adapter: what it is, what it was trained on, its numbers, how to load it."""
    return f"""---
library_name: peft
base_model: {info['base_model']}
tags: [medtok, korean, medical, lora]
---
# medtok adapter: {info['variant']} × {plan.profile}

Korean medical vocabulary extension of `{info['base_model']}`: {info['new_tokens']} new tokens
(variant `{info['variant']}`), rows initialised with `{info['strategy']}`, trained with LoRA
(r={info['profile']['r']}, alpha={info['profile']['alpha']}) and embedding mode `{info['embedding_mode']}`.

## Training data
Phase-0 plain Korean text: {', '.join(Path(f).name for f in plan.train_files)}; {len(plan.heldout_texts)} held-out lines for evaluation.

## Metrics
| metric | value |
|---|---|
| held-out loss before | {summary['eval_loss_before']:.4f} |
| held-out loss after | {summary['eval_loss_after']:.4f} |
| held-out bits/char before → after | {summary['bits_per_char_before']:.4f} → {summary['bits_per_char_after']:.4f} |
| steps | {summary['steps']} |
| tokens per second | {summary['tokens_per_second']:.1f} |
| peak memory (MB) | {summary['peak_memory_mb']:.0f} |

## Load
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from medtok_dagster.core.training import load_adapter

tokenizer = AutoTokenizer.from_pretrained("<this directory>")
base = AutoModelForCausalLM.from_pretrained("{info['base_model']}")
model = load_adapter(base, Path("<this directory>"), len(tokenizer), new_ids)  # new_ids: ids >= {info['base_vocab_size']}
```
"""


def run(pipes: PipesContext) -> None:
    plan = training.TrainPlan(**pipes.get_extra("plan"))
    lora = training.profile(plan.profile)
    init_dir = Path(plan.init_dir)
    info = json.loads((init_dir / "init_info.json").read_text())
    tokenizer = core_base_model.load_local_tokenizer(init_dir)
    new_ids = sorted(i for i in tokenizer.get_vocab().values() if i >= info["base_vocab_size"])
    source = core_base_model.BaseModelSource(plan.base_model, plan.base_model_kind, plan.base_model)
    model = training.load_adapter(core_base_model.load_causal_lm(source), init_dir, len(tokenizer), new_ids, is_trainable=True)
    before = metrics.heldout_loss(model, tokenizer, plan.heldout_texts)
    block = plan.max_seq_len or lora.max_seq_len
    dataset = training.packed_dataset(tokenizer, [line for f in plan.train_files for line in read_lines_parquet(Path(f))], block)
    args = training.training_arguments(plan, lora)
    curve: list[dict[str, Any]] = []
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[PipesLogCallback(pipes, curve)])
    resume = get_last_checkpoint(plan.checkpoint_dir) if Path(plan.checkpoint_dir).is_dir() else None
    pipes.log.info(f"resuming from {resume}" if resume else "starting from the initialised adapter")
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - started
    after = metrics.heldout_loss(model, tokenizer, plan.heldout_texts)
    steps_run = trainer.state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    summary = {
        "steps": trainer.state.global_step,
        "steps_this_run": steps_run,
        "resumed_from": resume or "",
        "train_loss": output.training_loss,
        "eval_loss_before": before.loss,
        "eval_loss_after": after.loss,
        "perplexity_before": before.perplexity,
        "perplexity_after": after.perplexity,
        "bits_per_char_before": before.bits_per_char,
        "bits_per_char_after": after.bits_per_char,
        "tokens_per_second": steps_run * args.per_device_train_batch_size * args.gradient_accumulation_steps * block / max(seconds, 1e-9),
        "peak_memory_mb": peak_memory_mb(),
        "train_blocks": len(dataset),
    }
    with atomic_dir(Path(plan.output_dir)) as staging:
        sizes = training.save_adapter(model, tokenizer, staging, new_ids, info["embedding_mode"])
        summary["adapter_mb"] = (staging / "adapter_model.safetensors").stat().st_size / 1e6
        summary["adapter_dir_mb"] = sizes["adapter_bytes"] / 1e6
        history = [row for row in trainer.state.log_history if "loss" in row]
        atomic_write_json(staging / "loss_curve.json", [{"step": r["step"], "loss": r["loss"], "learning_rate": r.get("learning_rate"), "grad_norm": r.get("grad_norm")} for r in history])
        atomic_write_json(staging / "metrics.json", summary)
        atomic_write_json(staging / "init_info.json", info)
        atomic_write_text(staging / "README.md", model_card(plan, info, summary))
    pipes.report_asset_materialization(metadata={k: v for k, v in summary.items() if isinstance(v, (int, float, str))})


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
