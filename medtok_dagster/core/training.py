"""LoRA profiles, adapter construction and reproducible save/load of extended models.

The prototype trained new rows with ``modules_to_save=["embed_tokens", "lm_head"]``, which stores
the whole 262k-row matrices: 1.3–4 GB per adapter. Here the default is peft's
``trainable_token_indices``, which trains and stores only the new rows (tens of MB); the prototype's
layout stays available as ``embedding_mode="modules_to_save"``. Profiles mirror the prototype's
settings for MedGemma 4B and 27B, plus a small CPU profile for the embedded 270M model, which keeps
the distilled rows frozen: next-token training moved them away from what distillation learned and
read held-out exam text worse than LoRA alone (README, training table).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medtok_dagster.core.base_model import (
    PICKLE_SUFFIXES,
    BaseModelError,
    check_safetensors,
    load_local_tokenizer,
)
from medtok_dagster.core.embeddings import embeddings_tied, resize_for
from medtok_dagster.core.io import atomic_write_json, read_json

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NON_LANGUAGE_MODULES = ("vision_tower", "vision_model", "multi_modal_projector", "audio_tower")
"""Module paths of an image-text model that LoRA must leave alone (SigLIP also has q/k/v_proj)."""
EMBEDDING_MODES = ("trainable_tokens", "modules_to_save", "frozen")
NEW_ROWS_FILE = "new_embeddings.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
INIT_INFO = "init_info.json"
LOSS_CURVE = "loss_curve.json"
METRICS = "metrics.json"
HELDOUT_SCORES = "heldout_scores.json"
CHECKPOINT_FINGERPRINT = "medtok_fingerprint.json"
"""Written into a checkpoint folder before training: the inputs its checkpoints were trained from."""
FINGERPRINT_PARTS = {
    "base_model": "the base model",
    "initialised": "the initialised adapter and rows (initialized_model)",
    "plan": "the training plan",
    "training_data": "the training corpora",
}


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded safely; the message says what is missing."""


def check_adapter_dir(adapter_dir: Path) -> None:
    """Require a local, complete adapter in safetensors before peft (or a long run) sees the directory.

    peft falls back to ``adapter_model.bin`` (a pickle) when the safetensors file is missing, and to
    the hub when neither exists; refusing here keeps adapters local and pickle-free. Only headers
    are read, so a truncated file is named in milliseconds, not as a safetensors error deep in a run.
    """
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{adapter_dir}: not an adapter directory (no {ADAPTER_CONFIG})")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f" (found pickle weights {pickles}; only safetensors adapters are loaded)"
            if pickles
            else ""
        )
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}{hint}")
    for name in (ADAPTER_WEIGHTS, NEW_ROWS_FILE):
        if (adapter_dir / name).exists():
            _check_complete(adapter_dir / name)


def _check_complete(path: Path) -> None:
    """A safetensors file whose header parses and whose data is all there, as an :class:`AdapterError`."""
    try:
        check_safetensors(path)
    except BaseModelError as exc:
        raise AdapterError(
            f"{str(exc).removesuffix('; re-download or re-save the model')}; "
            "re-materialise the asset that wrote it"
        ) from exc


def check_new_rows(adapter_dir: Path, rows: int, width: int) -> None:
    """The frozen new rows (if the adapter has them) must be ``rows`` new tokens × the model ``width``.

    Checked from the header alone, before a base model is loaded: a file from another variant or
    another base would otherwise be written into the wrong rows, or fail as a shape error later.
    """
    from safetensors import safe_open

    path = adapter_dir / NEW_ROWS_FILE
    if not path.exists():
        return
    _check_complete(path)
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    if "input" not in shapes:
        raise AdapterError(f"{path}: no 'input' tensor (has {sorted(shapes)}); re-materialise it")
    for key in ("input", "output"):
        if key not in shapes:
            continue
        shape = shapes[key]
        if len(shape) != 2 or shape[0] != rows:
            raise AdapterError(
                f"{path}: '{key}' holds {shape[0] if shape else 0} rows (shape {shape}), "
                f"but the tokenizer has {rows} new tokens; the file belongs to another tokenizer"
            )
        if shape[1] != width:
            raise AdapterError(
                f"{path}: '{key}' rows are {shape[1]} wide, but the model's embeddings are "
                f"{width} wide; the file belongs to another base model"
            )


def check_adapter(adapter_dir: Path, rows: int, width: int) -> None:
    """Everything loading ``adapter_dir`` onto a base of embedding ``width`` needs, checked first."""
    check_adapter_dir(adapter_dir)
    check_new_rows(adapter_dir, rows, width)


def check_saved_adapter(adapter_dir: Path, source: Any) -> None:
    """A saved adapter (initialised or trained) checked against its base, before any long work.

    Reads headers, ``init_info.json`` and the tokenizer only; the base model's width comes from its
    config, so a damaged or mismatched file is named before minutes of loading and scoring.
    """
    check_adapter_dir(adapter_dir)
    info = read_json(adapter_dir / INIT_INFO)
    new_rows = len(load_local_tokenizer(adapter_dir)) - int(info["base_vocab_size"])
    check_new_rows(adapter_dir, new_rows, model_width(source))


def model_width(source: Any) -> int:
    """The embedding width of a base model from its config alone (no weights are read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        source.load_from, trust_remote_code=False, local_files_only=source.is_local
    )
    return int(config.get_text_config().hidden_size)


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
    "embedded": LoraProfile(
        "embedded", 8, 16, 0.05, False, None, 8, 4, 5e-4, 128, gradient_checkpointing=False
    ),
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


def language_model_targets(names: Sequence[str]) -> str:
    """A peft target regex: modules called ``names`` anywhere except a vision (or audio) tower.

    MedGemma loads as ``Gemma3ForConditionalGeneration``, whose SigLIP tower has its own
    ``q_proj``/``k_proj``/``v_proj``; a plain name list would give it LoRA weights that text training
    never updates. peft full-matches a string against each module path.
    """
    excluded = "|".join(NON_LANGUAGE_MODULES)
    return rf"^(?!.*\b(?:{excluded})\b).*\.(?:{'|'.join(names)})$"


FP32_MEMORY_SHARE = 0.4
"""On a CPU, a model runs in fp32 only if its fp32 weights take at most this share of the machine's memory.

A stage holds the model and, while scoring, a chunk of logits over the 262k-word vocabulary, and
resizing briefly holds two embedding matrices. MedGemma 4B in fp32 (17.2 GB) left the 24 GiB
machine 1–2 GiB at its peak and `model_evaluation` was killed; in bf16 (8.6 GB) every stage fits.
The embedded 270M (1.1 GB in fp32) keeps fp32."""


def _cpu_dtype(source: Any) -> Any:
    """fp32 on the CPU unless the model's fp32 weights would not fit (see :data:`FP32_MEMORY_SHARE`)."""
    import psutil

    from medtok_dagster.core.base_model import float32_bytes

    needed = float32_bytes(source) if source is not None else None
    if needed is None or needed <= FP32_MEMORY_SHARE * psutil.virtual_memory().total:
        return torch.float32
    return torch.bfloat16


def compute_settings(source: Any = None) -> tuple[str, Any]:
    """Where and in which precision models run: bf16 on a GPU; on a CPU fp32, bf16 for a model too big for it.

    Without ``source`` the CPU precision is fp32 (callers that only ask where models run).
    """
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", _cpu_dtype(source))


def inference_settings(source: Any = None) -> tuple[str, Any]:
    """Where and in which precision models are scored: bf16 on a GPU and on a CPU with native bf16 matmul.

    Scoring a 262k-word output layer is matmul-bound; with avx512_bf16/AMX it runs about 4× faster
    in bf16. On the embedded 270M, base bits/char on the test split move from 3.5404 (fp32) to
    3.5427 (bf16) with the same exam answers. Other CPUs stay in fp32, except for a model whose fp32
    weights would not fit the machine (:func:`compute_settings`).
    """
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "cpu", torch.bfloat16
    return compute_settings(source)


def load_base(source: Any, lora: LoraProfile, for_training: bool = False) -> Any:
    """The base model as the profile runs it: its quantization, the machine's dtype and device.

    A quantized model stays where ``device_map`` put it and, for training, goes through peft's
    k-bit preparation (norms in fp32, input gradients on, gradient checkpointing on a GPU).
    """
    from medtok_dagster.core.base_model import load_causal_lm

    device, dtype = compute_settings(source)
    model = load_causal_lm(
        source,
        dtype=dtype,
        quantization=lora.quantization,
        device_map=device if lora.quantization else None,
    )
    if not lora.quantization:
        return model.to(device)
    if for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=lora.gradient_checkpointing and device == "cuda"
        )
    return model


def lora_config(lora: LoraProfile, new_ids: Sequence[int], mode: str) -> Any:
    """A peft ``LoraConfig`` whose embedding handling follows ``mode``, LoRA on the language model only."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=language_model_targets(lora.target_modules),
        bias="none",
        trainable_token_indices={"embed_tokens": list(new_ids)}
        if mode == "trainable_tokens"
        else None,
        modules_to_save=["embed_tokens", "lm_head"] if mode == "modules_to_save" else None,
    )


def attach_lora(model: Any, lora: LoraProfile, new_ids: Sequence[int], mode: str) -> Any:
    """Wrap ``model`` with LoRA (and trainable new rows, per ``mode``)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, new_ids, mode))


def quantized_linear_count(model: Any) -> int:
    """Linear layers held in 8-bit or 4-bit (bitsandbytes): proof that training ran on the quantized path."""
    return sum(
        1 for module in model.modules() if type(module).__name__ in ("Linear8bitLt", "Linear4bit")
    )


def lora_module_count(model: Any, inside: Sequence[str] = ()) -> int:
    """Modules carrying LoRA weights, optionally only those under one of the ``inside`` path parts."""
    return sum(
        1
        for name, module in model.named_modules()
        if hasattr(module, "lora_A")
        and len(module.lora_A)
        and (not inside or any(part in name.split(".") for part in inside))
    )


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total}


def directory_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_adapter(
    model: Any, tokenizer: Any, out_dir: Path, new_ids: Sequence[int], mode: str
) -> dict[str, int]:
    """Save adapter + tokenizer; for frozen embeddings also the initial new rows (needed to rebuild).

    ``save_embedding_layers=False`` keeps the resized 262k-row matrices out of the adapter: with
    trainable tokens the new rows are stored by peft itself, with frozen embeddings in
    ``new_embeddings.safetensors``.
    """
    from safetensors.torch import save_file

    model.save_pretrained(
        out_dir, save_embedding_layers=mode == "modules_to_save", safe_serialization=True
    )
    tokenizer.save_pretrained(out_dir)
    if mode == "frozen":
        save_file(frozen_rows(model.get_base_model(), new_ids), str(out_dir / NEW_ROWS_FILE))
    return {"adapter_bytes": directory_size(out_dir)}


def frozen_rows(model: Any, new_ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """The new rows of a model whose embeddings stay frozen, copied to the CPU for saving.

    ``input`` always; ``output`` too when the output projection is untied (its rows differ).
    """
    rows = {"input": _select(model.get_input_embeddings().weight, new_ids)}
    if not embeddings_tied(model) and model.get_output_embeddings() is not None:
        rows["output"] = _select(model.get_output_embeddings().weight, new_ids)
    return rows


def _select(matrix: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Rows ``ids`` of ``matrix`` as a contiguous CPU copy (the index is made on the matrix's device)."""
    index = torch.tensor(list(ids), dtype=torch.long, device=matrix.device)
    return matrix.detach().index_select(0, index).cpu().contiguous()


@torch.no_grad()
def restore_frozen_rows(
    model: Any, rows: Mapping[str, torch.Tensor], new_ids: Sequence[int]
) -> None:
    """Write saved frozen rows into the model's embeddings, on their device and in their dtype."""
    targets = {"input": model.get_input_embeddings()}
    if "output" in rows:
        targets["output"] = model.get_output_embeddings()
    for key, module in targets.items():
        weight = module.weight
        index = torch.tensor(list(new_ids), dtype=torch.long, device=weight.device)
        weight.index_copy_(0, index, rows[key].to(device=weight.device, dtype=weight.dtype))


def load_adapter(
    base_model: Any,
    adapter_dir: Path,
    new_len: int,
    new_ids: Sequence[int],
    is_trainable: bool = False,
) -> Any:
    """Rebuild an extended model: resize a fresh base, restore frozen rows if any, attach the adapter.

    The directory is checked first (complete files, new rows of the right count and width), so a
    damaged adapter is named before the base is resized or anything is written into it.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    check_adapter(adapter_dir, len(new_ids), base_model.get_input_embeddings().weight.shape[1])
    resize_for(base_model, new_len)
    rows_file = adapter_dir / NEW_ROWS_FILE
    if rows_file.exists():
        restore_frozen_rows(base_model, load_file(str(rows_file)), new_ids)
    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)


@dataclass(frozen=True)
class TrainPlan:
    """Everything one Phase-0 run needs; serialisable so it can cross into a Pipes subprocess."""

    base_model: str
    init_dir: str
    output_dir: str
    checkpoint_dir: str
    train_sources: dict[str, list[str]]
    """Training corpora by source (``medical``, ``general``): parquet files of lines."""
    source_shares: dict[str, float]
    """Share of training blocks drawn from each source (see :func:`mixture_blocks`)."""
    heldout_texts: dict[str, list[str]]
    """Held-out texts by type, scored for the base model, the initialised and the trained adapter."""
    profile: str
    max_steps: int
    save_steps: int
    seed: int = 0
    max_seq_len: int | None = None
    per_device_batch: int | None = None
    grad_accum: int | None = None
    base_model_kind: str = "local"
    """How ``base_model`` was resolved: only ``hub`` lets the training process contact the hub."""


def file_digest(path: Path) -> str:
    """sha256 of a file's content, read in 1 MiB chunks (corpora and adapters are tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_digest(directory: Path) -> str:
    """sha256 over every file's name and content digest: any re-materialisation changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory)}:{file_digest(path)}\n".encode())
    return digest.hexdigest()


def plan_settings(plan: TrainPlan, lora: LoraProfile) -> dict[str, Any]:
    """The plan's settings that change the trained weights (not where files go, not save_steps)."""
    return {
        "profile": lora.as_dict(),
        "max_steps": plan.max_steps,
        "seed": plan.seed,
        "max_seq_len": plan.max_seq_len or lora.max_seq_len,
        "per_device_batch": plan.per_device_batch or lora.per_device_batch,
        "grad_accum": plan.grad_accum or lora.grad_accum,
        "source_shares": dict(plan.source_shares),
    }


def training_inputs(plan: TrainPlan, lora: LoraProfile, base_identity: str) -> dict[str, Any]:
    """Everything a Phase-0 checkpoint's weights depend on, by part (see :data:`FINGERPRINT_PARTS`).

    The initialised directory and the corpora are keyed by content, the base model by
    :func:`medtok_dagster.core.base_model.identity`: a re-materialised ``initialized_model`` or a
    changed corpus under the same paths must not resume weights trained from the old ones. The
    result is in its JSON form (tuples as lists), as it is compared with the stored record.
    """
    inputs = {
        "base_model": base_identity,
        "initialised": directory_digest(Path(plan.init_dir)),
        "plan": plan_settings(plan, lora),
        "training_data": {
            name: {Path(f).name: file_digest(Path(f)) for f in files}
            for name, files in sorted(plan.train_sources.items())
        },
    }
    return json.loads(json.dumps(inputs))


def fingerprint(inputs: dict[str, Any]) -> str:
    """A short key of :func:`training_inputs`, shown in the trained adapter's metadata."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resume:
    """Where a run starts: the last checkpoint of the same inputs, and why others were discarded."""

    checkpoint: str | None
    discarded: str = ""

    @property
    def step(self) -> int:
        return int(Path(self.checkpoint).name.rsplit("-", 1)[-1]) if self.checkpoint else 0


def _stored_inputs(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The inputs a checkpoint folder was trained from; None if it has no (readable) record."""
    try:
        stored = json.loads((checkpoint_dir / CHECKPOINT_FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def stale_reason(stored: dict[str, Any] | None, inputs: dict[str, Any]) -> str:
    """Why checkpoints trained from ``stored`` must not be resumed for ``inputs`` ("" if they may)."""
    if stored is None:
        return "they record no inputs (written before checkpoints were keyed to them)"
    changed = []
    for part, label in FINGERPRINT_PARTS.items():
        old, new = stored.get(part), inputs.get(part)
        if old == new:
            continue
        if part == "plan" and isinstance(old, dict):
            fields = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
            label += " (" + ", ".join(f"{k}: {old.get(k)} → {new.get(k)}" for k in fields) + ")"
        changed.append(label)
    return f"{'; '.join(changed)} changed" if changed else ""


def prepare_checkpoints(checkpoint_dir: Path, inputs: dict[str, Any]) -> Resume:
    """Keep only checkpoints of ``inputs``: anything trained from other inputs is deleted, never resumed.

    The folder is then stamped with ``inputs`` before the first checkpoint is written, so a run
    killed at any point leaves checkpoints that say what they were trained from.
    """
    from transformers.trainer_utils import get_last_checkpoint

    discarded = ""
    if checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
        discarded = stale_reason(_stored_inputs(checkpoint_dir), inputs)
        if discarded:
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(checkpoint_dir / CHECKPOINT_FINGERPRINT, inputs)
    return Resume(get_last_checkpoint(str(checkpoint_dir)), discarded)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """After the adapter is in place its checkpoints are spent: a rerun trains from the start."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def pack_blocks(
    documents: Sequence[Sequence[int]], block: int, bos: int, eos: int
) -> list[list[int]]:
    """Documents as ``<bos> text <eos>``, concatenated and cut into blocks that each start with ``<bos>``.

    Gemma reads every sequence from ``<bos>`` (at inference the tokenizer puts it first), so a block
    that would start mid-document gets a ``<bos>`` and one token less of text; a block that starts at
    a document boundary already has one. The incomplete tail is dropped, so nothing is padded.
    """
    if block < 2:
        raise ValueError("a block must hold <bos> and at least one token")
    stream: list[int] = []
    for ids in documents:
        stream.extend([bos, *ids, eos])
    blocks, position = [], 0
    while position < len(stream):
        if stream[position] == bos:
            chunk, position = stream[position : position + block], position + block
        else:
            chunk, position = [bos, *stream[position : position + block - 1]], position + block - 1
        if len(chunk) < block:
            break
        blocks.append(chunk)
    return blocks


def block_labels(input_ids: torch.Tensor, bos: int) -> torch.Tensor:
    """Labels for packed blocks: the inputs, except that ``<bos>`` is never a target (inference never predicts it)."""
    return input_ids.masked_fill(input_ids == bos, -100)


def mixture_blocks(
    blocks: Mapping[str, Sequence[list[int]]], shares: Mapping[str, float], seed: int = 0
) -> list[list[int]]:
    """Blocks of every source in the requested shares, shuffled; a smaller source is repeated, never cut.

    Why a mixture and not the corpora's natural proportion: the shipped general corpora (software
    help, laws) hold about four times as many blocks as the medical sentences, and Phase-0 training
    in that proportion pulls the model away from exam Korean (the README's training table). The
    largest source relative to its share sets the total, so every block of every source is used.
    """
    if any(share < 0 for share in shares.values()) or not sum(shares.values()) > 0:
        raise ValueError(f"source shares must be non-negative and not all zero, got {dict(shares)}")
    unknown = sorted(set(shares) - set(blocks))
    if unknown:
        raise ValueError(
            f"shares name sources with no corpus: {unknown}; sources: {sorted(blocks)}"
        )
    wanted = {name: share / sum(shares.values()) for name, share in shares.items() if share > 0}
    empty = sorted(name for name in wanted if not blocks[name])
    if empty:
        raise ValueError(
            f"training sources {empty} have a share but no complete block of text; "
            "give them text or set their share to 0 (trained_adapter: medical_share)"
        )
    total = max(len(blocks[name]) / share for name, share in wanted.items())
    rng = random.Random(seed)
    mixed: list[list[int]] = []
    for name, share in wanted.items():
        count, pool = round(share * total), list(blocks[name])
        repeats, rest = divmod(count, len(pool))
        mixed += pool * repeats + rng.sample(pool, rest)
    rng.shuffle(mixed)
    return mixed


def mixed_blocks(
    tokenizer: Any,
    sources: Mapping[str, Sequence[str]],
    block: int,
    shares: Mapping[str, float],
    seed: int = 0,
) -> list[list[int]]:
    """:func:`pack_blocks` blocks of each source with a share, mixed by ``shares`` (Phase-0 and calibration read the same text)."""
    per_source = {
        name: pack_blocks(
            tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else [],
            block,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        if shares.get(name, 0) > 0
        else []
        for name, texts in sources.items()
    }
    return mixture_blocks(per_source, shares, seed)


def packed_dataset(
    tokenizer: Any,
    sources: Mapping[str, Sequence[str]],
    block: int,
    shares: Mapping[str, float],
    seed: int = 0,
) -> Any:
    """A ``datasets.Dataset`` of :func:`pack_blocks` blocks of each source, mixed by ``shares``."""
    from datasets import Dataset

    blocks = mixed_blocks(tokenizer, sources, block, shares, seed)
    labels = block_labels(
        torch.tensor(blocks, dtype=torch.long).reshape(len(blocks), block), tokenizer.bos_token_id
    ).tolist()
    return Dataset.from_dict({"input_ids": blocks, "labels": labels})


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


def read_sources(plan: TrainPlan) -> dict[str, list[str]]:
    """The plan's training lines by source, read from its parquet files."""
    from medtok_dagster.core.corpus import read_lines_parquet

    return {
        name: [line for file in files for line in read_lines_parquet(Path(file))]
        for name, files in plan.train_sources.items()
    }


def phase0_trainer(
    model: Any, tokenizer: Any, plan: TrainPlan, lora: LoraProfile, callbacks: Sequence[Any] = ()
) -> Any:
    """The ``transformers.Trainer`` of one Phase-0 run: the plan's mixture, packed from ``<bos>``.

    One owner for how Phase-0 trains, shared by the ``trained_adapter`` process and the training
    budget benchmark, so the benchmark measures what the asset ships.
    """
    from transformers import Trainer

    dataset = packed_dataset(
        tokenizer,
        read_sources(plan),
        plan.max_seq_len or lora.max_seq_len,
        plan.source_shares,
        plan.seed,
    )
    return Trainer(
        model=model,
        args=training_arguments(plan, lora),
        train_dataset=dataset,
        callbacks=list(callbacks),
    )


def in_precision(model: Any, dtype: Any, keep: bool) -> Any:
    """The model in the scoring precision (that of the base reference); a copy when the original still trains."""
    if model.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype) if keep else model.to(dtype)
