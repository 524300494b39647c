"""Merge a trained adapter into its resized base: the one artifact a user serves.

The result is a plain ``save_pretrained`` directory (safetensors weights, the extended tokenizer,
and for image-text bases the processor configs), which ``AutoModelForCausalLM`` and
``AutoTokenizer`` load with no medtok or peft code, and which vLLM or TGI serve as they are.
Merging always happens on a full-precision base (the machine's bf16 or fp32), even when training
ran on an 8-bit one: LoRA deltas are added to real weights, not to quantized ones. The result is
saved in the precision the base was shipped in (bf16 for MedGemma), so the model a user serves is
the size of the base, not twice it because the merge ran in fp32 on a CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import training
from medtok_dagster.core.io import atomic_write_json, atomic_write_text, read_json

if TYPE_CHECKING:
    import torch

MERGE_INFO = "medtok_merge.json"
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)
"""Configs an image-text base needs beside the tokenizer to be served with images (data, never code)."""


def merged_card(info: dict[str, Any], final_dir: Path) -> str:
    """README.md of the merged directory, with a load snippet that runs as written."""
    return f"""---
library_name: transformers
base_model: {info["base_model"]}
tags: [medtok, korean, medical]
---
# medtok merged model: {info["variant"]} × {info["profile"]}

`{info["base_model"]}` extended with {info["new_tokens"]} Korean medical tokens (variant `{info["variant"]}`),
new rows initialised with `{info["strategy"]}`, trained with LoRA, and merged: a plain
`save_pretrained` directory that serves as it is (vLLM, TGI, transformers). Its held-out bits per
character, exam accuracy and prefill speed beside the base model are in the `model_evaluation` asset.

## Load
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir = "{final_dir}"
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
inputs = tokenizer("당뇨병 환자의 혈당 조절 목표는", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```
"""


def copy_processor_files(source: core_base_model.BaseModelSource, out_dir: Path) -> list[str]:
    """Copy the base's image-processor configs (JSON and templates, never code) next to the tokenizer."""
    from transformers.utils import cached_file

    copied = []
    for name in PROCESSOR_FILES:
        path = cached_file(
            source.load_from,
            name,
            local_files_only=source.is_local,
            _raise_exceptions_for_missing_entries=False,
        )
        if path:
            shutil.copyfile(path, out_dir / name)
            copied.append(name)
    return copied


def saving_dtype(computed: torch.dtype, shipped: torch.dtype | None) -> torch.dtype:
    """Save in the shipped precision when it is narrower than the one the merge ran in."""
    if shipped is None or not shipped.is_floating_point:
        return computed
    return shipped if shipped.itemsize < computed.itemsize else computed


def merge_adapter(
    source: core_base_model.BaseModelSource, adapter_dir: Path, out_dir: Path, final_dir: Path
) -> dict[str, Any]:
    """Base + adapter → one merged model saved into ``out_dir`` (to be renamed to ``final_dir``).

    The adapter is checked before the base is loaded: a damaged file is named in seconds.
    """
    training.check_saved_adapter(adapter_dir, source)
    device, dtype = training.compute_settings(source)
    info = read_json(adapter_dir / training.INIT_INFO)
    tokenizer = core_base_model.load_local_tokenizer(adapter_dir)
    new_ids = range(info["base_vocab_size"], len(tokenizer))
    base = core_base_model.load_causal_lm(source, dtype=dtype).to(device)
    merged = training.load_adapter(base, adapter_dir, len(tokenizer), new_ids).merge_and_unload()
    dtype = saving_dtype(dtype, core_base_model.stored_dtype(source))
    merged = merged.to(dtype)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    processor_files = copy_processor_files(source, out_dir)
    summary = {
        "variant": info["variant"],
        "profile": info["profile"]["name"],
        "base_model": info["base_model"],
        "strategy": info["strategy"],
        "new_tokens": info["new_tokens"],
        "adapter": str(adapter_dir),
        "architecture": type(merged).__name__,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in merged.parameters()),
        "vocab_rows": merged.get_input_embeddings().weight.shape[0],
        "processor_files": processor_files,
    }
    atomic_write_json(out_dir / MERGE_INFO, summary)
    atomic_write_text(out_dir / "README.md", merged_card(summary, final_dir))
    summary["bytes"] = training.directory_size(out_dir)
    return summary
