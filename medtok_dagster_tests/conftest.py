"""Shared fixtures: the real Gemma 3 tokenizer (converted once), a tiny random Gemma 3, and data dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data"
BASE_CACHE = REPO / "model" / "base"


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """Directory with the real Gemma 3 tokenizer, converted from the embedded GGUF once per machine."""
    from medtok_dagster.core.base_model import ensure_embedded

    return ensure_embedded(BASE_CACHE, with_model=False)


@pytest.fixture(scope="session")
def gemma_tokenizer(gemma_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


def copy_sample_data(target: Path) -> Path:
    """A private copy of the shipped sample data, without outputs a local demo wrote into it."""
    generated = ("special_chars_report.json", "dictionary_terms.txt*", "medgemma_*")
    shutil.copytree(
        SAMPLE_DATA, target, ignore=shutil.ignore_patterns("scripts", "README.md", *generated)
    )
    return target


def empty_model_dir(target: Path) -> Path:
    """An empty model dir whose base-model cache is shared with the repo's (no reconversion)."""
    target.mkdir()
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    (target / "base").symlink_to(BASE_CACHE, target_is_directory=True)
    return target


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Sample data the test may corrupt freely."""
    return copy_sample_data(tmp_path / "data")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return empty_model_dir(tmp_path / "model")


def tiny_text_config(tokenizer, vocab_size: int, **overrides):
    """The 2-layer, 64-wide Gemma 3 text stack every tiny test model shares, with the real special ids."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


def make_tiny_gemma(
    target: Path, tokenizer, vocab_size: int | None = None, tied: bool = True
) -> Path:
    """A randomly initialised 2-layer Gemma 3 with the real tokenizer: fast, but shaped like the real thing."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(
        tiny_text_config(tokenizer, vocab_size or len(tokenizer), tie_word_embeddings=tied)
    )
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


MEDGEMMA_VOCAB_ROWS = 262208
"""MedGemma pads its embedding matrix to 262,208 rows; its image soft token is id 262,144."""


def make_tiny_medgemma(target: Path, tokenizer) -> Path:
    """A randomly initialised image-text Gemma 3 shaped like MedGemma: SigLIP tower, projector, padded vocabulary.

    ``AutoModelForCausalLM`` loads it as ``Gemma3ForConditionalGeneration``, as it loads MedGemma 4B
    and 27B, so every code path that must keep LoRA out of the vision tower is exercised.
    """
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    text = tiny_text_config(tokenizer, MEDGEMMA_VOCAB_ROWS)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=262144,
        boi_token_index=255999,
        eoi_token_index=256000,
    )
    Gemma3ForConditionalGeneration(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_medgemma_dir(tmp_path_factory, gemma_tokenizer) -> Path:
    """A tiny MedGemma-shaped image-text model saved as a plain directory (the `base_model` path)."""
    return make_tiny_medgemma(tmp_path_factory.mktemp("tiny-medgemma"), gemma_tokenizer)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, gemma_tokenizer) -> Path:
    """A tiny tied Gemma 3 saved as a plain directory, usable as the `base_model` path."""
    return make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"), gemma_tokenizer)


def teach(
    model, blocks, bos: int, steps: int, learning_rate: float, batch_size: int = 4
) -> list[float]:
    """A few AdamW steps on packed blocks (sampled with replacement): gives a tiny random model something to know."""
    import torch

    from medtok_dagster.core.training import block_labels

    generator = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        picks = torch.randint(len(blocks), (batch_size,), generator=generator).tolist()
        ids = torch.tensor([list(blocks[i]) for i in picks])
        loss = model(input_ids=ids, labels=block_labels(ids, bos)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


MEDICAL_NEW = ["▁당뇨병", "▁혈당", "▁심근경색", "▁췌장염"]
"""New tokens of the taught-model tests; no line of MEDICAL_LINES contains the last."""
MEDICAL_LINES = [
    "당뇨병 환자는 혈당 조절이 중요하다.",
    "공복 혈당 수치가 높으면 당뇨병을 의심한다.",
    "급성 심근경색 환자는 흉통을 호소한다.",
    "심근경색 후에는 혈당 관리도 필요하다.",
    "당뇨병과 심근경색은 함께 오는 경우가 많다.",
] * 6


@pytest.fixture(scope="session")
def taught_gemma_dir(gemma_tokenizer, tiny_gemma_dir, tmp_path_factory) -> Path:
    """The tiny Gemma after 60 steps on MEDICAL_LINES (blocks of 16): it now predicts their pieces."""
    from transformers import AutoModelForCausalLM

    from medtok_dagster.core.lm_metrics import encode_plain
    from medtok_dagster.core.training import pack_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    bos = gemma_tokenizer.bos_token_id
    blocks = pack_blocks(
        encode_plain(gemma_tokenizer, MEDICAL_LINES), 16, bos, gemma_tokenizer.eos_token_id
    )
    teach(model, blocks, bos, steps=60, learning_rate=3e-3, batch_size=8)
    target = tmp_path_factory.mktemp("taught-gemma")
    model.save_pretrained(target)
    gemma_tokenizer.save_pretrained(target)
    return target


def make_frozen_adapter(adapter_dir: Path, base_dir: Path) -> list[int]:
    """An adapter as `trained_adapter` leaves it for a frozen-embedding profile; returns the new ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtok_dagster.core import embeddings, training
    from medtok_dagster.core.io import atomic_write_json

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


def subtoken_mean_model(model_dir: Path, base_tokenizer, tokenizer, new_ids, base_len: int):
    """A tiny model resized to ``tokenizer`` with its new rows at ``subtoken_mean`` (distillation's start)."""
    from transformers import AutoModelForCausalLM

    from medtok_dagster.core import embeddings as E

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    E.resize_for(model, len(tokenizer))
    tokens = [E.NewToken(tokenizer.convert_ids_to_tokens(i), i, "ngram") for i in new_ids]
    E.apply_init(model, E.plan_init(tokens, "subtoken_mean", base_tokenizer, base_len), base_len)
    return model
