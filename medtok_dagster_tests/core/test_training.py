"""LoRA profiles and adapter save/reload on a tiny Gemma 3 with the real tokenizer."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import training as T
from medtok_dagster_tests.conftest import subtoken_mean_model, teach

TEXT = "그 당뇨병 환자는 혈당을 측정한다"


@pytest.fixture(scope="module")
def setup(gemma_tokenizer, tiny_gemma_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(["▁당뇨병", "▁환자는", "▁혈당을"])
    base_len = len(gemma_tokenizer)
    return tokenizer, list(range(base_len, len(tokenizer))), base_len


def test_profiles_match_the_prototype():
    four, big = T.profile("medgemma-4b"), T.profile("medgemma-27b")
    assert (
        four.r,
        four.alpha,
        four.dropout,
        four.learning_rate,
        four.per_device_batch * four.grad_accum,
    ) == (64, 128, 0.05, 1e-4, 32)
    assert (big.learning_rate, big.per_device_batch * big.grad_accum, big.train_new_rows) == (
        5e-5,
        32,
        False,
    )
    assert T.embedding_mode(big) == "frozen" and T.embedding_mode(four) == "trainable_tokens"
    with pytest.raises(ValueError, match="unknown LoRA profile"):
        T.profile("medgemma-2b")


@pytest.mark.parametrize("mode", T.EMBEDDING_MODES)
def test_reloaded_adapter_reproduces_trained_logits(
    mode, setup, gemma_tokenizer, tiny_gemma_dir, tmp_path
):
    tokenizer, new_ids, base_len = setup
    model = T.attach_lora(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        T.profile("embedded"),
        new_ids,
        mode,
    )
    blocks = T.pack_blocks(
        tokenizer([TEXT] * 4, add_special_tokens=False)["input_ids"],
        8,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    teach(model, blocks, tokenizer.bos_token_id, steps=2, learning_rate=1e-2, batch_size=2)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    sizes = T.save_adapter(model, tokenizer, tmp_path, new_ids, mode)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    reloaded = T.load_adapter(fresh, tmp_path, len(tokenizer), new_ids)
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, reference)
    adapter = (tmp_path / "adapter_model.safetensors").stat().st_size
    if mode == "modules_to_save":
        assert adapter > 50 * 2**20
    else:
        assert adapter < 2**20
    assert sizes["adapter_bytes"] > adapter


def test_frozen_rows_saved_in_fp32_load_into_a_bf16_base(
    setup, gemma_tokenizer, tiny_gemma_dir, tmp_path
):
    tokenizer, new_ids, base_len = setup
    model = T.attach_lora(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        T.profile("embedded"),
        new_ids,
        "frozen",
    )
    rows = model.get_input_embeddings().weight[new_ids].detach().clone()
    T.save_adapter(model, tokenizer, tmp_path, new_ids, "frozen")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.bfloat16)
    reloaded = T.load_adapter(fresh, tmp_path, len(tokenizer), new_ids)
    loaded = reloaded.get_input_embeddings().weight[new_ids]
    assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, rows.to(torch.bfloat16))


def test_27b_profile_freezes_embeddings(setup, gemma_tokenizer, tiny_gemma_dir):
    tokenizer, new_ids, base_len = setup
    lora = T.profile("medgemma-27b")
    model = T.attach_lora(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        lora,
        new_ids,
        T.embedding_mode(lora),
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    four = T.attach_lora(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        T.profile("medgemma-4b"),
        new_ids,
        "trainable_tokens",
    )
    assert any("trainable_tokens" in name for name, p in four.named_parameters() if p.requires_grad)


def test_every_packed_block_starts_with_bos_and_documents_are_bos_text_eos():
    bos, eos = 2, 1
    documents = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34, 35, 36], [40]]
    blocks = T.pack_blocks(documents, 5, bos, eos)
    assert all(len(b) == 5 and b[0] == bos for b in blocks)
    assert blocks[0] == [bos, 10, 11, 12, eos] and blocks[1] == [bos, 20, 21, eos, bos]
    assert blocks[2] == [bos, 30, 31, 32, 33], "a block starting mid-document gets its own <bos>"
    text = [t for b in blocks for t in b if t not in (bos, eos)]
    assert text == [10, 11, 12, 20, 21, 30, 31, 32, 33, 34, 35, 36, 40][: len(text)]
    labels = T.block_labels(torch.tensor(blocks), bos)
    assert (labels[torch.tensor(blocks) == bos] == -100).all() and (
        labels[torch.tensor(blocks) != bos] >= 0
    ).all()


def test_packed_dataset_from_real_text_starts_every_block_with_bos(gemma_tokenizer):
    sources = {"medical": ["당뇨병 환자의 혈당 조절이 필요합니다."] * 30, "general": []}
    dataset = T.packed_dataset(gemma_tokenizer, sources, 16, {"medical": 1.0, "general": 0.0})
    assert len(dataset) > 5
    assert all(row[0] == gemma_tokenizer.bos_token_id for row in dataset["input_ids"])
    assert all(label[0] == -100 for label in dataset["labels"])


def test_mixture_uses_every_block_and_repeats_the_smaller_source_to_reach_its_share():
    blocks = {"medical": [[1, i] for i in range(10)], "general": [[2, i] for i in range(40)]}
    half = T.mixture_blocks(blocks, {"medical": 0.5, "general": 0.5}, seed=0)
    assert sorted(b for b in half if b[0] == 2) == blocks["general"]
    assert sorted(b for b in half if b[0] == 1) == sorted(blocks["medical"] * 4)
    assert [b[0] for b in half[:20]] != [1] * 20 and [b[0] for b in half[:20]] != [2] * 20
    uneven = T.mixture_blocks(blocks, {"medical": 0.3, "general": 0.7}, seed=1)
    medical = [b for b in uneven if b[0] == 1]
    assert len(uneven) == 57 and len(medical) == 17, "40 general blocks are 70%: 17 medical ones"
    assert {tuple(b) for b in medical} == {tuple(b) for b in blocks["medical"]}, "none left out"
    assert T.mixture_blocks(blocks, {"medical": 1.0, "general": 0.0}) != blocks["medical"]
    assert sorted(T.mixture_blocks(blocks, {"medical": 1.0, "general": 0.0})) == blocks["medical"]


@pytest.mark.parametrize(
    ("blocks", "shares", "message"),
    [
        ({"medical": [], "general": [[2]]}, {"medical": 0.5, "general": 0.5}, "no complete block"),
        ({"medical": [[1]]}, {"medical": 0.0}, "not all zero"),
        ({"medical": [[1]]}, {"medical": 1.0, "law": 0.5}, "no corpus"),
    ],
)
def test_mixture_refuses_shares_it_cannot_honour(blocks, shares, message):
    with pytest.raises(ValueError, match=message):
        T.mixture_blocks(blocks, shares)


def test_lora_on_an_image_text_model_targets_the_language_model_only(
    gemma_tokenizer, tiny_medgemma_dir, tmp_path
):
    model = AutoModelForCausalLM.from_pretrained(tiny_medgemma_dir)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert any(
        name.endswith("q_proj") and "vision_tower" in name for name, _ in model.named_modules()
    ), "the SigLIP tower has q_proj"
    base_len = len(gemma_tokenizer) + 1
    new_ids = [base_len, base_len + 1]
    peft_model = T.attach_lora(model, T.profile("medgemma-4b"), new_ids, "trainable_tokens")
    lora = [
        name
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and len(module.lora_A)
    ]
    assert len(lora) == 2 * 7 and all(".language_model." in name for name in lora)
    assert T.lora_module_count(peft_model, T.NON_LANGUAGE_MODULES) == 0
    T.save_adapter(peft_model, gemma_tokenizer, tmp_path, new_ids, "trainable_tokens")
    from safetensors import safe_open

    with safe_open(str(tmp_path / T.ADAPTER_WEIGHTS), "pt") as saved:
        keys = list(saved.keys())
    assert keys and not [k for k in keys if "vision" in k or "multi_modal" in k]
    assert any("embed_tokens" in k for k in keys)


def test_a_model_too_big_for_fp32_runs_in_bf16_on_the_cpu(tiny_gemma_dir, tmp_path, monkeypatch):
    """fp32 while its weights take at most 40% of memory; beyond that bf16, so the stage fits."""
    import types

    import psutil

    from medtok_dagster.core import base_model

    source = base_model.resolve(str(tiny_gemma_dir), tmp_path / "cache")
    weights = base_model.float32_bytes(source)
    assert weights == (tiny_gemma_dir / "model.safetensors").stat().st_size
    monkeypatch.setattr(T.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(T.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)

    def memory(total: int) -> None:
        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=total))

    memory(weights * 3)
    assert T.compute_settings(source) == ("cpu", torch.float32)
    assert T.inference_settings(source) == ("cpu", torch.float32)
    memory(weights * 2)
    assert T.compute_settings(source) == ("cpu", torch.bfloat16)
    assert T.inference_settings(source) == ("cpu", torch.bfloat16)
    assert T.compute_settings() == ("cpu", torch.float32)
