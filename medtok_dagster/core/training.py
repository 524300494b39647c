"""LoRA profiles, adapter construction and reproducible save/load of extended models.

The prototype trained new rows with ``modules_to_save=["embed_tokens", "lm_head"]``, which stores
the whole 262k-row matrices: 1.3–4 GB per adapter. Here the default is peft's
``trainable_token_indices``, which trains and stores only the new rows (tens of MB); the prototype's
layout stays available as ``embedding_mode="modules_to_save"``. Profiles mirror the prototype's
settings for MedGemma 4B and 27B, plus a small CPU profile for the embedded 270M model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medtok_dagster.core.base_model import PICKLE_SUFFIXES
from medtok_dagster.core.embeddings import embeddings_tied, resize_for

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EMBEDDING_MODES = ("trainable_tokens", "modules_to_save", "frozen")
NEW_ROWS_FILE = "new_embeddings.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded safely; the message says what is missing."""


def check_adapter_dir(adapter_dir: Path) -> None:
    """Require a local adapter in safetensors before peft sees the directory.

    peft falls back to ``adapter_model.bin`` (a pickle) when the safetensors file is missing, and to
    the hub when neither exists; refusing here keeps adapters local and pickle-free.
    """
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{adapter_dir}: not an adapter directory (no {ADAPTER_CONFIG})")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found pickle weights {pickles}; only safetensors adapters are loaded)" if pickles else ""
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}{hint}")


@dataclass(frozen=True)
class LoraProfile:
    """LoRA shape and Phase-0 training settings for one model size."""

    name: str
    r: int
    alpha: int
    dropout: float
    train_new_rows: bool
    quantization: str | None
    per_device_batch: int
    grad_accum: int
    learning_rate: float
    max_seq_len: int
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 0.3
    gradient_checkpointing: bool = True
    target_modules: tuple[str, ...] = LORA_TARGETS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, LoraProfile] = {
    "medgemma-4b": LoraProfile("medgemma-4b", 64, 128, 0.05, True, "8bit", 2, 16, 1e-4, 1024),
    "medgemma-27b": LoraProfile("medgemma-27b", 64, 128, 0.05, False, "8bit", 1, 32, 5e-5, 512),
    "embedded": LoraProfile("embedded", 8, 16, 0.05, True, None, 8, 4, 5e-4, 128, gradient_checkpointing=False),
}


def profile(name: str) -> LoraProfile:
    """Look up a profile by name, listing the choices on a typo."""
    if name not in PROFILES:
        raise ValueError(f"unknown LoRA profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def embedding_mode(lora: LoraProfile, requested: str | None = None) -> str:
    """The profile's embedding mode unless one is requested; 27B-style profiles freeze embeddings."""
    mode = requested or ("trainable_tokens" if lora.train_new_rows else "frozen")
    if mode not in EMBEDDING_MODES:
        raise ValueError(f"unknown embedding mode {mode!r}; choose one of {EMBEDDING_MODES}")
    return mode


def lora_config(lora: LoraProfile, new_ids: Sequence[int], mode: str) -> Any:
    """A peft ``LoraConfig`` whose embedding handling follows ``mode``."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        trainable_token_indices={"embed_tokens": list(new_ids)} if mode == "trainable_tokens" else None,
        modules_to_save=["embed_tokens", "lm_head"] if mode == "modules_to_save" else None,
    )


def attach_lora(model: Any, lora: LoraProfile, new_ids: Sequence[int], mode: str) -> Any:
    """Wrap ``model`` with LoRA (and trainable new rows, per ``mode``)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, new_ids, mode))


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total}


def directory_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_adapter(model: Any, tokenizer: Any, out_dir: Path, new_ids: Sequence[int], mode: str) -> dict[str, int]:
    """Save adapter + tokenizer; for frozen embeddings also the initial new rows (needed to rebuild).

    ``save_embedding_layers=False`` keeps the resized 262k-row matrices out of the adapter: with
    trainable tokens the new rows are stored by peft itself, with frozen embeddings in
    ``new_embeddings.safetensors``.
    """
    from safetensors.torch import save_file

    model.save_pretrained(out_dir, save_embedding_layers=mode == "modules_to_save", safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if mode == "frozen":
        base = model.get_base_model()
        index = torch.tensor(list(new_ids), dtype=torch.long)
        rows = {"input": base.get_input_embeddings().weight[index].detach().contiguous()}
        if not embeddings_tied(base) and base.get_output_embeddings() is not None:
            rows["output"] = base.get_output_embeddings().weight[index].detach().contiguous()
        save_file(rows, str(out_dir / NEW_ROWS_FILE))
    return {"adapter_bytes": directory_size(out_dir)}


def load_adapter(base_model: Any, adapter_dir: Path, new_len: int, new_ids: Sequence[int], is_trainable: bool = False) -> Any:
    """Rebuild an extended model: resize a fresh base, restore frozen rows if any, attach the adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file

    check_adapter_dir(adapter_dir)
    resize_for(base_model, new_len)
    rows_file = adapter_dir / NEW_ROWS_FILE
    if rows_file.exists():
        rows = load_file(str(rows_file))
        index = torch.tensor(list(new_ids), dtype=torch.long)
        with torch.no_grad():
            base_model.get_input_embeddings().weight[index] = rows["input"]
            if "output" in rows:
                base_model.get_output_embeddings().weight[index] = rows["output"]
    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)


def quick_train(model: Any, tokenizer: Any, texts: Sequence[str], steps: int, learning_rate: float, batch_size: int = 4, max_len: int = 128, seed: int = 0) -> list[float]:
    """A few AdamW steps on ``texts`` (cycled): the 'after K steps' column of the init comparison."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        picks = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in picks], return_tensors="pt", padding=True, truncation=True, max_length=max_len)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**{k: v.to(model.device) for k, v in batch.items()}, labels=labels.to(model.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass(frozen=True)
class TrainPlan:
    """Everything one Phase-0 run needs; serialisable so it can cross into a Pipes subprocess."""

    base_model: str
    init_dir: str
    output_dir: str
    checkpoint_dir: str
    train_files: list[str]
    heldout_texts: list[str]
    profile: str
    max_steps: int
    save_steps: int
    seed: int = 0
    max_seq_len: int | None = None
    per_device_batch: int | None = None
    grad_accum: int | None = None
    base_model_kind: str = "local"
    """How ``base_model`` was resolved: only ``hub`` lets the training process contact the hub."""


def packed_dataset(tokenizer: Any, texts: Sequence[str], block: int) -> Any:
    """Concatenate tokenised lines (EOS between) and cut fixed blocks: no padding is trained on."""
    from datasets import Dataset

    ids: list[int] = []
    for encoding in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoding + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def training_arguments(plan: TrainPlan, lora: LoraProfile) -> Any:
    """The prototype's Phase-0 settings: effective batch 32, cosine, warmup 0.1, wd 0.01, clip 0.3."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=plan.checkpoint_dir,
        per_device_train_batch_size=plan.per_device_batch or lora.per_device_batch,
        gradient_accumulation_steps=plan.grad_accum or lora.grad_accum,
        learning_rate=lora.learning_rate,
        warmup_steps=lora.warmup_ratio,
        lr_scheduler_type="cosine",
        weight_decay=lora.weight_decay,
        max_grad_norm=lora.max_grad_norm,
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        gradient_checkpointing=lora.gradient_checkpointing and cuda,
        bf16=cuda,
        max_steps=plan.max_steps,
        save_steps=plan.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        seed=plan.seed,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
