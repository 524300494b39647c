"""LoRA profiles and adapter save/reload on a tiny Gemma 3 with the real tokenizer."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import embeddings as E
from medtok_dagster.core import training as T

TEXT = "그 당뇨병 환자는 혈당을 측정한다"


@pytest.fixture(scope="module")
def setup(gemma_tokenizer, tiny_gemma_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(["▁당뇨병", "▁환자는", "▁혈당을"])
    base_len = len(gemma_tokenizer)
    return tokenizer, list(range(base_len, len(tokenizer))), base_len


def initialised(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len):
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    E.resize_for(model, len(tokenizer))
    tokens = [E.NewToken(tokenizer.convert_ids_to_tokens(i), i, "ngram") for i in new_ids]
    E.apply_init(model, E.plan_init(tokens, "subtoken_mean", gemma_tokenizer, base_len), base_len)
    return model


def test_profiles_match_the_prototype():
    four, big = T.profile("medgemma-4b"), T.profile("medgemma-27b")
    assert (four.r, four.alpha, four.dropout, four.learning_rate, four.per_device_batch * four.grad_accum) == (64, 128, 0.05, 1e-4, 32)
    assert (big.learning_rate, big.per_device_batch * big.grad_accum, big.train_new_rows) == (5e-5, 32, False)
    assert T.embedding_mode(big) == "frozen" and T.embedding_mode(four) == "trainable_tokens"
    with pytest.raises(ValueError, match="unknown LoRA profile"):
        T.profile("medgemma-2b")


@pytest.mark.parametrize("mode", T.EMBEDDING_MODES)
def test_reloaded_adapter_reproduces_trained_logits(mode, setup, gemma_tokenizer, tiny_gemma_dir, tmp_path):
    tokenizer, new_ids, base_len = setup
    model = T.attach_lora(initialised(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len), T.profile("embedded"), new_ids, mode)
    T.quick_train(model, tokenizer, [TEXT] * 4, steps=2, learning_rate=1e-2, batch_size=2)
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


def test_27b_profile_freezes_embeddings(setup, gemma_tokenizer, tiny_gemma_dir):
    tokenizer, new_ids, base_len = setup
    lora = T.profile("medgemma-27b")
    model = T.attach_lora(initialised(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len), lora, new_ids, T.embedding_mode(lora))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    four = T.attach_lora(initialised(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len), T.profile("medgemma-4b"), new_ids, "trainable_tokens")
    assert any("trainable_tokens" in name for name, p in four.named_parameters() if p.requires_grad)
