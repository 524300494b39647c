import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medtok_dagster.core import base_model
from medtok_dagster.core.base_model import BaseModelError


def test_embedded_tokenizer_is_gemma3(gemma_dir, gemma_tokenizer):
    assert gemma_dir.name.startswith("gemma3-270m-" + base_model.embedded_sha256()[:8])
    assert len(gemma_tokenizer) == 262144
    assert gemma_tokenizer.tokenize("당뇨병 환자")[0] == "당"
    assert base_model.ensure_embedded(gemma_dir.parent, with_model=False) == gemma_dir


def test_resolve_embedded_and_unknown(gemma_dir):
    source = base_model.resolve("embedded:gemma3-270m", gemma_dir.parent, with_model=False)
    assert (source.kind, source.load_from) == ("embedded", str(gemma_dir))
    with pytest.raises(BaseModelError, match="unknown embedded model"):
        base_model.resolve("embedded:llama", gemma_dir.parent)


def test_local_dir_with_pickle_weights_is_refused(tmp_path, gemma_tokenizer):
    gemma_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BaseModelError, match="no safetensors weights.*pytorch_model.bin"):
        base_model.resolve(str(tmp_path), tmp_path / "cache")


def test_missing_local_path_is_reported(tmp_path):
    with pytest.raises(BaseModelError, match="does not exist"):
        base_model.resolve(str(tmp_path / "nope"), tmp_path)


def test_unreachable_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE=1 is set"):
        base_model.resolve("google/medgemma-4b-it", tmp_path)
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE=1 is set"):
        base_model.load_tokenizer(
            base_model.BaseModelSource("google/medgemma-4b-it", "hub", "google/medgemma-4b-it")
        )


def test_tiny_model_loads_with_safetensors_only(tiny_gemma_dir):
    source = base_model.resolve(str(tiny_gemma_dir), tiny_gemma_dir)
    model = base_model.load_causal_lm(source)
    assert model.get_input_embeddings().weight.shape[0] == 262144
    assert model.config.tie_word_embeddings


def tokenizer_only_cache(gemma_dir, root):
    """A copy of the tokenizer-only conversion, as the tokenizer stages leave it."""
    target = base_model.embedded_dir(root)
    shutil.copytree(gemma_dir, target)
    return target


def test_converting_the_weights_reuses_the_converted_tokenizer(gemma_dir, tmp_path, monkeypatch):
    """The GGUF's vocabulary is parsed once: the weights' conversion copies the tokenizer files."""
    import transformers

    target = tokenizer_only_cache(gemma_dir, tmp_path)

    def no_gguf_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was parsed from the GGUF again")

    class Weights:
        hf_quantizer = None

        def save_pretrained(self, directory, safe_serialization):
            (Path(directory) / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf_tokenizer)
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Weights()
    )
    assert base_model.ensure_embedded(tmp_path, with_model=True) == target
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert (target / "tokenizer.json").read_bytes() == (gemma_dir / "tokenizer.json").read_bytes()
    assert json.loads((target / base_model.MARKER_FILE).read_text())["has_model"] is True
    assert not list(target.glob("*.gguf")), "the assembled GGUF is not kept"


def test_processes_needing_the_conversion_at_once_convert_it_once(tmp_path, monkeypatch):
    calls = []

    def slow_convert(staging, with_model, converted_tokenizer):
        calls.append(with_model)
        time.sleep(0.5)
        (staging / base_model.MARKER_FILE).write_text(
            json.dumps({"gguf_sha256": base_model.embedded_sha256(), "has_model": with_model})
        )

    monkeypatch.setattr(base_model, "_convert", slow_convert)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: base_model.ensure_embedded(tmp_path, False), range(4)))
    assert calls == [False]
    assert set(results) == {base_model.embedded_dir(tmp_path)}


def test_warming_serves_the_tokenizer_first_then_converts_the_weights_reusing_it(
    tmp_path, monkeypatch
):
    calls = []

    def fake_convert(staging, with_model, converted_tokenizer):
        calls.append((with_model, converted_tokenizer))
        (staging / base_model.MARKER_FILE).write_text(
            json.dumps({"gguf_sha256": base_model.embedded_sha256(), "has_model": with_model})
        )

    monkeypatch.setattr(base_model, "_convert", fake_convert)
    base_model.warm_embedded(tmp_path)
    assert calls == [(False, None), (True, base_model.embedded_dir(tmp_path))]
    base_model.warm_embedded(tmp_path)
    assert len(calls) == 2, "a warm cache is left alone"


def test_identity_tells_apart_models_of_one_shape(tmp_path, gemma_tokenizer):
    """A copy keeps its identity; the same shape with other weights (a fine-tune) does not."""
    import torch
    from transformers import AutoModelForCausalLM

    from medtok_dagster_tests.conftest import make_tiny_gemma

    first = make_tiny_gemma(tmp_path / "first", gemma_tokenizer)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    tuned = tmp_path / "tuned"
    model = AutoModelForCausalLM.from_pretrained(first)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    model.save_pretrained(tuned)
    gemma_tokenizer.save_pretrained(tuned)

    def of(path):
        return base_model.identity(base_model.resolve(str(path), tmp_path / "cache"))

    assert of(first) == of(copy)
    assert of(first) != of(tuned)
    assert of(first).startswith("local:")
    embedded = base_model.BaseModelSource("x", "embedded", "embedded:gemma3-270m")
    assert base_model.identity(embedded) == f"embedded:{base_model.embedded_sha256()[:16]}"
