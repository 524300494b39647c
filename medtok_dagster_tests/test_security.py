"""Security guarantees (README "Security"), each proved by the tests named there.

1. The webserver binds to 127.0.0.1 unless configured otherwise.
2. ``trust_remote_code`` is never enabled, and code shipped with a model is never run.
3. Only safetensors weights are loaded (no pickle), for base models and adapters alike.
4. User-supplied paths resolve inside the configured data and model directories.
5. Nothing is fetched from a network at run time unless the user configured a hub id.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from medtok_dagster import checks, layout, partitions
from medtok_dagster.assets import dedicated, descriptions, model, tokenizers
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import embeddings, training
from medtok_dagster.core.base_model import BaseModelError
from medtok_dagster.definitions import build_definitions
from medtok_dagster.resources import (
    BaseModelResource,
    PathEscapeError,
    PathsResource,
    build_resources,
)
from medtok_dagster_tests.conftest import REPO

SOURCE_DIR = REPO / "medtok_dagster"
HUB_ID = "google/medgemma-4b-it"
TIER1 = dg.load_assets_from_modules([dedicated])


def python_sources() -> list[Path]:
    return sorted(SOURCE_DIR.rglob("*.py"))


def parsed_sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in python_sources():
        yield path.relative_to(REPO), ast.parse(path.read_text(encoding="utf-8"), str(path))


def is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def file_tree(*roots: Path) -> set[str]:
    """Every file under ``roots`` with its size and mtime, to show a failed run wrote nothing."""
    return {
        f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for root in roots
        for p in root.rglob("*")
        if p.is_file()
    }


# 1. The webserver binds to 127.0.0.1 unless configured otherwise ---------------------------------


def make_ui_dry_run(*overrides: str) -> str:
    """``make -n ui``: prints the commands, starts nothing (HOST from the caller's shell is ignored)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "MAKEFLAGS")}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "ui", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if "dagster dev" in line)


def test_ui_binds_to_loopback_unless_host_is_given():
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", (REPO / "Makefile").read_text(), re.MULTILINE)
    default = make_ui_dry_run()
    assert " -h 127.0.0.1 " in default and "0.0.0.0" not in default
    assert " -h 0.0.0.0 " in make_ui_dry_run("HOST=0.0.0.0")


# 2. trust_remote_code is never enabled ----------------------------------------------------------


def remote_code_offenders(path: Path, tree: ast.Module) -> list[str]:
    """Calls, dict literals and item assignments that set trust_remote_code to anything but False,
    and ``Auto*.from_pretrained`` calls that leave it to transformers' default."""
    found = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            found += [
                f"{where}: trust_remote_code={ast.unparse(k.value)}"
                for k in node.keywords
                if k.arg == "trust_remote_code" and not is_false(k.value)
            ]
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "from_pretrained"
                and isinstance(func.value, ast.Name)
                and func.value.id.startswith("Auto")
            ):
                if not any(k.arg == "trust_remote_code" for k in node.keywords):
                    found.append(f"{where}: {ast.unparse(func)} without trust_remote_code=False")
        elif isinstance(node, ast.Dict):
            found += [
                f"{where}: {{'trust_remote_code': {ast.unparse(v)}}}"
                for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant)
                and k.value == "trust_remote_code"
                and not is_false(v)
            ]
        elif isinstance(node, ast.Assign):
            found += [
                f"{where}: {ast.unparse(t)} = {ast.unparse(node.value)}"
                for t in node.targets
                if isinstance(t, ast.Subscript)
                and isinstance(t.slice, ast.Constant)
                and t.slice.value == "trust_remote_code"
                and not is_false(node.value)
            ]
    return found


def test_no_source_enables_trust_remote_code():
    sources = list(parsed_sources())
    assert len(sources) > 20
    offenders = [o for path, tree in sources for o in remote_code_offenders(path, tree)]
    assert not offenders, offenders
    planted = ast.parse(
        "AutoTokenizer.from_pretrained(p)\nAutoModel.from_pretrained(p, trust_remote_code=flag)\nkw = {'trust_remote_code': True}\nkw['trust_remote_code'] = 1"
    )
    assert len(remote_code_offenders(Path("planted.py"), planted)) == 4


def record_from_pretrained(
    monkeypatch: pytest.MonkeyPatch, classes: list[type]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Wrap each class's ``from_pretrained`` to record (class, path, kwargs) and then load for real."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    for cls in classes:
        original = next(
            c.__dict__["from_pretrained"] for c in cls.__mro__ if "from_pretrained" in c.__dict__
        ).__func__

        def wrapper(klass, *args, _original=original, **kwargs):
            target = (
                args[1]
                if klass.__name__.startswith("Peft")
                else (args[0] if args else kwargs.get("pretrained_model_name_or_path"))
            )
            calls.append((klass.__name__, str(target), dict(kwargs)))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(wrapper))
    return calls


def variant_dir_for(paths: PathsResource, base_dir: Path, added: list[str]) -> int:
    """A variant tokenizer (base + ``added``) where the model assets look for it; returns the base length.

    Written with the ``tokenizers`` library directly, which is twice as fast as a transformers round trip.
    """
    from tokenizers import AddedToken, Tokenizer

    target = layout.variant_dir(paths, "ded_medical")
    shutil.copytree(
        base_dir, target, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer.json")
    )
    backend = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    base_len = backend.get_vocab_size()
    backend.add_tokens([AddedToken(token, normalized=True, special=False) for token in added])
    backend.save(str(target / "tokenizer.json"))
    (target / "token_mapping.json").write_text(json.dumps({"original_vocab_size": base_len}))
    return base_len


def test_every_platform_load_passes_trust_remote_code_false(
    monkeypatch, tmp_path, data_dir, model_dir, gemma_dir, tiny_gemma_dir
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    paths = PathsResource(data_dir=str(data_dir), model_dir=str(model_dir))
    resource = BaseModelResource(name_or_path=str(tiny_gemma_dir), paths=paths)
    base_len = variant_dir_for(paths, tiny_gemma_dir, ["▁당뇨병", "▁혈당을"])
    calls = record_from_pretrained(
        monkeypatch, [AutoTokenizer, AutoModelForCausalLM, PreTrainedModel, PeftModel]
    )
    tokens = [
        embeddings.NewToken("▁당뇨병", base_len, "ngram"),
        embeddings.NewToken("▁혈당을", base_len + 1, "ngram"),
    ]
    extended, tokenizer, _ = model.build_initialized(
        resource, paths, "ded_medical", tokens, "subtoken_mean", None
    )
    assert len(tokenizer) == base_len + 2
    new_ids = [t.token_id for t in tokens]
    peft_model = training.attach_lora(
        extended, training.profile("embedded"), new_ids, "trainable_tokens"
    )
    training.save_adapter(peft_model, tokenizer, tmp_path / "adapter", new_ids, "trainable_tokens")
    training.load_adapter(
        core_base_model.load_causal_lm(resource.source()),
        tmp_path / "adapter",
        len(tokenizer),
        new_ids,
    )

    loaded = {name for name, _, _ in calls}
    assert {"AutoTokenizer", "AutoModelForCausalLM", "Gemma3ForCausalLM", "PeftModel"} <= loaded, (
        calls
    )
    assert all(kwargs.get("trust_remote_code", False) is False for _, _, kwargs in calls), calls
    auto = [(name, target, kwargs) for name, target, kwargs in calls if name.startswith("Auto")]
    assert len(auto) >= 4
    assert all(
        kwargs["trust_remote_code"] is False and kwargs["local_files_only"] is True
        for _, _, kwargs in auto
    ), auto


def link_model_dir(source: Path, target: Path) -> Path:
    """A writable copy of a model directory whose (large) weights are symlinks."""
    target.mkdir()
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            (target / item.name).symlink_to(item)
        else:
            shutil.copy(item, target / item.name)
    return target


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_model_dir_asking_for_custom_code_is_refused_and_never_run(
    config_file, tmp_path, tiny_gemma_dir
):
    custom = link_model_dir(tiny_gemma_dir, tmp_path / "custom")
    marker = tmp_path / "custom_code_ran"
    (custom / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import Gemma3ForCausalLM as Evil\n"
    )
    (custom / "tokenization_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import GemmaTokenizerFast as Evil\n"
    )
    config = json.loads((custom / config_file).read_text())
    config["auto_map"] = (
        {"AutoModelForCausalLM": "modeling_evil.Evil"}
        if config_file == "config.json"
        else {"AutoTokenizer": [None, "tokenization_evil.Evil"]}
    )
    (custom / config_file).write_text(json.dumps(config))
    with pytest.raises(
        BaseModelError, match=rf"{config_file}: asks for custom model code .*never runs code"
    ):
        core_base_model.resolve(str(custom), tmp_path / "cache")
    bypass = core_base_model.BaseModelSource(str(custom), "local", str(custom))
    if config_file == "config.json":
        core_base_model.load_causal_lm(bypass)
    else:
        core_base_model.load_tokenizer(bypass)
    assert not marker.exists(), "code shipped with the model was executed"


# 3. Only safetensors weights are loaded (no pickle) -----------------------------------------------


class PickleTrap:
    """Unpickling this creates ``marker``: a stand-in for a malicious ``.bin`` checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def trap_bytes(marker: Path) -> bytes:
    return pickle.dumps(PickleTrap(marker))


def record_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []
    original = torch.load

    def recording(*args, **kwargs):
        calls.append((args[0] if args else None, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def test_the_pickle_trap_is_real(tmp_path):
    pickle.loads(trap_bytes(tmp_path / "sprung"))
    assert (tmp_path / "sprung").exists()


def test_base_model_with_safetensors_and_booby_trapped_bin_never_unpickles(
    monkeypatch, tmp_path, tiny_gemma_dir
):
    both = link_model_dir(tiny_gemma_dir, tmp_path / "both")
    marker = tmp_path / "unpickled"
    (both / "pytorch_model.bin").write_bytes(trap_bytes(marker))
    loads = record_torch_load(monkeypatch)
    source = core_base_model.resolve(str(both), tmp_path / "cache")
    loaded = core_base_model.load_causal_lm(source)
    assert loaded.get_input_embeddings().weight.shape[0] == 262144
    assert not marker.exists() and loads == []


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, tiny_gemma_dir, gemma_tokenizer) -> tuple[Path, int, list[int]]:
    """A LoRA + one trainable new row on the tiny Gemma 3, saved the platform's way (with the base tokenizer)."""
    out = tmp_path_factory.mktemp("adapter")
    base_len = len(gemma_tokenizer)
    base = core_base_model.load_causal_lm(core_base_model.resolve(str(tiny_gemma_dir), out))
    embeddings.resize_for(base, base_len + 1)
    peft_model = training.attach_lora(
        base, training.profile("embedded"), [base_len], "trainable_tokens"
    )
    training.save_adapter(peft_model, gemma_tokenizer, out, [base_len], "trainable_tokens")
    return out, base_len + 1, [base_len]


def test_adapters_load_from_safetensors_only(monkeypatch, tmp_path, saved_adapter, tiny_gemma_dir):
    adapter, new_len, new_ids = saved_adapter
    assert (adapter / training.ADAPTER_WEIGHTS).exists() and not list(adapter.glob("*.bin"))
    source = core_base_model.resolve(str(tiny_gemma_dir), tmp_path)
    marker = tmp_path / "unpickled"
    both = shutil.copytree(adapter, tmp_path / "both")
    (both / "adapter_model.bin").write_bytes(trap_bytes(marker))
    bin_only = shutil.copytree(both, tmp_path / "bin_only")
    (bin_only / training.ADAPTER_WEIGHTS).unlink()
    loads = record_torch_load(monkeypatch)

    training.load_adapter(core_base_model.load_causal_lm(source), both, new_len, new_ids)
    with pytest.raises(
        training.AdapterError,
        match=r"no adapter_model.safetensors \(found pickle weights \['adapter_model.bin'\]",
    ):
        training.load_adapter(core_base_model.load_causal_lm(source), bin_only, new_len, new_ids)
    assert not marker.exists() and loads == []


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → dotted module path for every import (``import torch as T``, ``from torch import load``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return aliases


def dotted(node: ast.expr, aliases: dict[str, str]) -> str:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value, aliases)}.{node.attr}"
    return ""


PICKLE_LOADERS = (
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
)


def pickle_offenders(path: Path, tree: ast.Module) -> list[str]:
    """``torch.load`` without an explicit ``weights_only=True``, and any direct unpickling."""
    aliases = import_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func, aliases)
        if name in ("torch.load", "torch.serialization.load"):
            weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        elif name in PICKLE_LOADERS:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_source_unpickles_or_calls_torch_load_without_weights_only():
    offenders = [o for path, tree in parsed_sources() for o in pickle_offenders(path, tree)]
    assert not offenders, offenders
    planted = ast.parse(
        "import torch as T\nfrom pickle import loads\nT.load(f)\ntorch.load(f, weights_only=False)\nloads(b)\ntorch.load(f, weights_only=True)"
    )
    assert len(pickle_offenders(Path("planted.py"), planted)) == 3


# 4. User-supplied paths resolve inside the configured data and model directories ------------------

OPENED: list[str] = []
WATCHING: list[bool] = []


def _record_opens(event: str, args: tuple) -> None:
    if WATCHING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    """Every file the process opens while the test runs (audit hook, installed once per session)."""
    if not getattr(sys, "_medtok_open_hook", False):
        sys.addaudithook(_record_opens)
        sys._medtok_open_hook = True
    OPENED.clear()
    WATCHING.append(True)
    yield OPENED
    WATCHING.clear()


class NoUpstreamData(dg.IOManager):
    """Every input is an empty frame and no output may be stored: the step must stop at its config."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        raise AssertionError(f"{context.asset_key} produced an output")

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return pd.DataFrame()


PER_VARIANT = ("tokenizer_variants", "token_descriptions")


def upstream_specs(asset: dg.AssetsDefinition) -> list[dg.AssetSpec]:
    """Stand-ins for the asset's upstream keys so it can be materialized alone."""
    return [
        dg.AssetSpec(
            key,
            partitions_def=partitions.variant_partitions if key.path[0] in PER_VARIANT else None,
        )
        for key in asset.dependency_keys
    ]


def escaping(tmp_path: Path, secret: Path, under: str) -> list[str]:
    """An absolute path, a ``..`` escape and a ``..`` escape behind a real subdirectory, all to ``secret``."""
    relative = os.path.relpath(secret, tmp_path / under)
    return [str(secret), relative, f"tokenizer/../{relative}", "../../etc/passwd"]


def path_knob_cases(tmp_path: Path) -> list[tuple[dg.AssetsDefinition, str | None, str, Any, str]]:
    """(asset, partition, config field, bad value, expected message) for every path-taking run-config field."""
    secret_file = tmp_path / "secret.jsonl"
    secret_model = tmp_path / "secret_model"
    refused = "give a path relative to the data or model directory, without '..'"
    cases = [
        (tokenizers.tokenizer_efficiency, None, "heldout_jsonl", [value], refused)
        for value in escaping(tmp_path, secret_file, "data")
    ]
    cases += [
        (descriptions.llm_token_descriptions, "ded_medical", "model", value, refused)
        for value in escaping(tmp_path, secret_model, "model")
    ]
    cases += [
        (model.init_comparison, None, "variant", value, "unknown variant")
        for value in ("../../etc/passwd", "ded_medical/../../..", str(secret_model))
    ]
    return cases


def test_run_config_paths_outside_the_data_and_model_dirs_fail_before_any_io(
    tmp_path, data_dir, model_dir, tiny_gemma_dir, opened_files
):
    (tmp_path / "secret.jsonl").write_text('{"text": "secret"}\n')
    link_model_dir(tiny_gemma_dir, tmp_path / "secret_model")
    resources = {
        **build_resources(str(data_dir), str(model_dir), str(tiny_gemma_dir)),
        "io_manager": NoUpstreamData(),
    }
    before = file_tree(data_dir, model_dir)
    cases = path_knob_cases(tmp_path)
    opened_files.clear()
    for asset, partition, field, value, message in cases:
        with pytest.raises(ValidationError, match=re.escape(message)):
            dg.materialize(
                [asset, *upstream_specs(asset)],
                selection=[asset.key],
                partition_key=partition,
                resources=resources,
                run_config={"ops": {asset.node_def.name: {"config": {field: value}}}},
            )
    secrets = [f for f in opened_files if f.startswith((str(tmp_path / "secret"), "/etc/passwd"))]
    assert not secrets, secrets
    assert file_tree(data_dir, model_dir) == before
    assert len(cases) == 11


def test_paths_resource_refuses_the_same_escapes(tmp_path, data_dir, model_dir):
    paths = PathsResource(data_dir=str(data_dir), model_dir=str(model_dir))
    for value in escaping(tmp_path, tmp_path / "secret.jsonl", "data"):
        with pytest.raises(PathEscapeError, match="outside"):
            paths.data(value)
    for value in escaping(tmp_path, tmp_path / "secret_model", "model"):
        with pytest.raises(PathEscapeError, match="outside"):
            paths.model(value)


def test_describer_model_is_looked_up_inside_the_model_dir_only(
    monkeypatch, hub_online, data_dir, model_dir, tiny_gemma_dir
):
    paths = PathsResource(data_dir=str(data_dir), model_dir=str(model_dir))
    base = BaseModelResource(paths=paths)
    link_model_dir(tiny_gemma_dir, model_dir / "describer")
    monkeypatch.chdir(data_dir.parent)
    inside = descriptions.describer_source("describer", paths, base)
    assert (inside.kind, inside.load_from) == ("local", str((model_dir / "describer").resolve()))
    assert descriptions.describer_source("data", paths, base).kind == "hub", (
        "a name must not reach the working directory"
    )
    assert descriptions.describer_source(HUB_ID, paths, base).kind == "hub"


def test_run_config_cannot_repoint_the_data_model_or_base_model_resources(
    tmp_path, data_dir, model_dir
):
    defs = build_definitions(str(data_dir), str(model_dir), "embedded:gemma3-270m")
    before = file_tree(data_dir, model_dir)
    overrides = [
        ("paths", "data_dir", "/etc"),
        ("paths", "model_dir", str(tmp_path / "elsewhere")),
        ("base_model", "name_or_path", "/etc"),
        ("io_manager", "database", str(tmp_path / "elsewhere.duckdb")),
    ]
    for resource, field, value in overrides:
        with pytest.raises(
            dg.DagsterInvalidConfigError,
            match=rf'unexpected config entry "{field}" at path root:resources:{resource}',
        ):
            dg.materialize(
                TIER1,
                resources=defs.resources,
                run_config={"resources": {resource: {"config": {field: value}}}},
            )
    assert file_tree(data_dir, model_dir) == before
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "elsewhere.duckdb").exists()


# 5. Nothing is fetched from a network unless the user configured a hub id -------------------------

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def block_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and record) every connection and name lookup that is not loopback or a Unix socket."""
    attempts: list[str] = []

    def external(address: Any) -> bool:
        return isinstance(address, tuple) and str(address[0]) not in LOOPBACK

    original_connect, original_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if external(address):
            attempts.append(f"connect {address}")
            raise ConnectionRefusedError(f"network blocked by test: {address}")
        return original_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and str(host) not in LOOPBACK:
            attempts.append(f"getaddrinfo {host}")
            raise socket.gaierror(f"network blocked by test: {host}")
        return original_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        attempts.append(f"create_connection {address}")
        raise ConnectionRefusedError(f"network blocked by test: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hugging Face libraries in online mode with an empty cache, so only our code decides what is fetched."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_local_runs_never_touch_the_network(
    monkeypatch, hub_online, tmp_path, data_dir, model_dir, tiny_gemma_dir, saved_adapter
):
    attempts = block_network(monkeypatch)
    defs = build_definitions(str(data_dir), str(model_dir), "embedded:gemma3-270m")
    result = dg.materialize(
        [*TIER1, *checks.build_checks()],
        resources=defs.resources,
        selection=dg.AssetSelection.assets(*TIER1) | dg.AssetSelection.checks_for_assets(*TIER1),
    )
    assert result.success
    assert (
        len(build_resources(str(data_dir), str(model_dir))["base_model"].load_tokenizer()) == 262144
    )
    local = BaseModelResource(
        name_or_path=str(tiny_gemma_dir),
        paths=PathsResource(data_dir=str(data_dir), model_dir=str(model_dir)),
    )
    adapter, new_len, new_ids = saved_adapter
    training.load_adapter(core_base_model.load_causal_lm(local.source()), adapter, new_len, new_ids)
    with pytest.raises((OSError, ValueError)):
        core_base_model.load_local_tokenizer(tmp_path / "no-such-variant")
    assert attempts == []


def test_a_hub_id_is_the_only_thing_that_reaches_for_the_network(monkeypatch, hub_online, tmp_path):
    from huggingface_hub import constants

    attempts = block_network(monkeypatch)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(BaseModelError, match=rf"cannot load base model '{HUB_ID}'"):
        core_base_model.load_tokenizer(core_base_model.resolve(HUB_ID, tmp_path, with_model=False))
    assert attempts and all("huggingface.co" in a for a in attempts), attempts

    attempts.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        BaseModelError, match="HF_HUB_OFFLINE=1 is set and it is not in the local cache"
    ):
        core_base_model.load_tokenizer(core_base_model.resolve(HUB_ID, tmp_path, with_model=False))
    assert attempts == []
