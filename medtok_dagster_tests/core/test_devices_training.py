"""Model stages keep every tensor on the model's device, proven without a GPU.

A tiny model's embeddings are swapped for fake tensors (``FakeTensorMode``) on an accelerator
device, and the stage runs inside the mode, so every tensor it makes is fake too, on the device it
asked for. An op that mixes the accelerator with a non-scalar CPU tensor raises as ACCELERATOR does
(``embedding_bag`` with CPU indices, writing CPU rows into the matrix), while a CPU index into the
matrix is accepted, as CUDA accepts it. The accelerator is ``meta``: a fake ``cuda`` tensor in a
CPU-only build also fails where real ACCELERATOR would not (any Python indexing: "PyTorch is not linked
with support for cuda devices"), so it cannot tell a real bug from a missing driver. Fake tensors
carry no values, so these tests prove placement only; the numbers are the CPU tests' business
(test_embeddings, test_training).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import embeddings as E
from medtok_dagster.core import training as T

NEW = ["▁당뇨병", "▁혈당", "▁심근경색", "▁췌장염"]
ACCELERATOR = torch.device("meta")
"""Stands in for a GPU (see the module docstring)."""


def fake_accelerator_embeddings(model, mode: FakeTensorMode) -> None:
    """Replace the input (and, if untied, output) embedding weights with fake ACCELERATOR parameters."""
    tied = E.embeddings_tied(model)
    modules = [model.get_input_embeddings()]
    if not tied and model.get_output_embeddings() is not None:
        modules.append(model.get_output_embeddings())
    for module in modules:
        with mode:
            module.weight = torch.nn.Parameter(
                torch.empty(module.weight.shape, dtype=module.weight.dtype, device=ACCELERATOR),
                requires_grad=False,
            )
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def extended(directory: Path, gemma_tokenizer):
    """The tiny model resized for NEW (on the CPU), with its tokenizer and new ids."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.add_tokens(NEW)
    model = AutoModelForCausalLM.from_pretrained(directory)
    E.resize_for(model, len(tokenizer))
    return model, tokenizer, list(range(len(gemma_tokenizer), len(tokenizer)))


@pytest.fixture(params=["gemma", "medgemma"])
def fake_accelerator_model(request, gemma_tokenizer, tiny_gemma_dir, tiny_medgemma_dir):
    """A tiny Gemma 3 (text) or MedGemma-shaped (image-text) model whose embeddings are on fake ACCELERATOR."""
    directory = tiny_gemma_dir if request.param == "gemma" else tiny_medgemma_dir
    model, tokenizer, new_ids = extended(directory, gemma_tokenizer)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_accelerator_embeddings(model, mode)
    return model, tokenizer, new_ids, mode


@pytest.mark.parametrize("strategy", E.STRATEGIES)
def test_apply_init_computes_and_writes_rows_on_the_embedding_device(
    fake_accelerator_model, gemma_tokenizer, strategy
):
    model, tokenizer, new_ids, mode = fake_accelerator_model
    base_len = len(gemma_tokenizer)
    tokens = [
        E.NewToken(tokenizer.convert_ids_to_tokens(i), i, "ngram", "blood sugar") for i in new_ids
    ]
    plan = E.plan_init(tokens, strategy, gemma_tokenizer, base_len)
    with mode:
        info = E.apply_init(model, plan, base_len)
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, FakeTensor) and weight.device == ACCELERATOR
    assert info["rows"] == len(new_ids)


def test_frozen_rows_are_read_on_the_device_and_saved_from_the_cpu(fake_accelerator_model):
    model, _, new_ids, mode = fake_accelerator_model
    with mode:
        rows = T.frozen_rows(model, new_ids)
    assert rows["input"].device.type == "cpu"
    assert list(rows["input"].shape) == [len(new_ids), model.get_input_embeddings().embedding_dim]


def test_saved_frozen_rows_are_restored_onto_the_device(
    fake_accelerator_model, gemma_tokenizer, tiny_gemma_dir, tmp_path
):
    """The 27B profile (and ``embedded`` on a GPU) rebuilds its model from new_embeddings.safetensors.

    The file is read outside the mode (safetensors cannot load into fake tensors); what
    ``load_adapter`` then does with the CPU rows runs on the fake-ACCELERATOR model.
    """
    from safetensors.torch import load_file

    saved, tokenizer, new_ids = extended(tiny_gemma_dir, gemma_tokenizer)
    peft_model = T.attach_lora(saved, T.profile("medgemma-27b"), new_ids, "frozen")
    T.save_adapter(peft_model, tokenizer, tmp_path, new_ids, "frozen")
    rows = load_file(str(tmp_path / T.NEW_ROWS_FILE))
    model, _, _, mode = fake_accelerator_model
    with mode:
        T.restore_frozen_rows(model, rows, new_ids)
    assert model.get_input_embeddings().weight.device == ACCELERATOR
