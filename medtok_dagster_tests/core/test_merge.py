"""The merged model: plain transformers loads it, with the new rows, in the precision the base shipped in."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import base_model, embeddings, merge, training
from medtok_dagster.core.io import atomic_write_json


def frozen_adapter(adapter_dir: Path, base_dir: Path) -> list[int]:
    """An adapter as `trained_adapter` leaves it for a frozen-embedding profile; returns the new ids."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base_len = len(tokenizer)
    tokenizer.add_tokens(["▁당뇨병", "▁혈당"])
    new_ids = list(range(base_len, len(tokenizer)))
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    embeddings.resize_for(model, len(tokenizer))
    peft_model = training.attach_lora(model, training.profile("embedded"), new_ids, "frozen")
    adapter_dir.mkdir(parents=True)
    training.save_adapter(peft_model, tokenizer, adapter_dir, new_ids, "frozen")
    atomic_write_json(
        adapter_dir / training.INIT_INFO,
        {
            "variant": "ded_medical",
            "profile": training.profile("embedded").as_dict(),
            "base_model": str(base_dir),
            "strategy": "subtoken_mean",
            "base_vocab_size": base_len,
            "embedding_mode": "frozen",
            "new_tokens": len(new_ids),
        },
    )
    return new_ids


@pytest.mark.parametrize("shipped", [torch.float32, torch.bfloat16])
def test_merged_model_keeps_the_base_precision_and_loads_plainly(tmp_path, tiny_gemma_dir, shipped):
    base_dir = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=shipped)
    model.save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tiny_gemma_dir).save_pretrained(base_dir)
    new_ids = frozen_adapter(tmp_path / "adapter", base_dir)
    source = base_model.resolve(str(base_dir), tmp_path / "cache")
    out = tmp_path / "merged"
    out.mkdir()

    info = merge.merge_adapter(source, tmp_path / "adapter", out, final_dir=out)

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert loaded.dtype == shipped
    assert info["dtype"] == str(shipped).removeprefix("torch.")
    assert loaded.get_input_embeddings().weight.shape[0] == new_ids[-1] + 1
    assert len(AutoTokenizer.from_pretrained(out)) == new_ids[-1] + 1


def test_saving_dtype_never_widens():
    assert merge.saving_dtype(torch.float32, torch.bfloat16) == torch.bfloat16
    assert merge.saving_dtype(torch.bfloat16, torch.float32) == torch.bfloat16
    assert merge.saving_dtype(torch.float32, None) == torch.float32
