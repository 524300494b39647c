"""The merged model: plain transformers loads it, with the new rows, in the precision the base shipped in."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import base_model, merge
from medtok_dagster_tests.conftest import make_frozen_adapter


@pytest.mark.parametrize("shipped", [torch.float32, torch.bfloat16])
def test_merged_model_keeps_the_base_precision_and_loads_plainly(tmp_path, tiny_gemma_dir, shipped):
    base_dir = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=shipped)
    model.save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tiny_gemma_dir).save_pretrained(base_dir)
    new_ids = make_frozen_adapter(tmp_path / "adapter", base_dir)
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
