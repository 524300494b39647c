"""The code location loads, validates with the dagster CLI, and describes itself for the UI."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from medtok_dagster.definitions import build_definitions


def test_dagster_definitions_validate(data_dir, model_dir):
    env = {**os.environ, "MEDTOK_DATA_DIR": str(data_dir), "MEDTOK_MODEL_DIR": str(model_dir)}
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "medtok_dagster.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_asset_explains_itself(data_dir, model_dir):
    defs = build_definitions(str(data_dir), str(model_dir), "embedded:gemma3-270m")
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        spec = node.to_asset_spec() if hasattr(node, "to_asset_spec") else None
        assert node.description, key
        assert node.group_name in (
            "raw",
            "dedicated",
            "corpora",
            "vocab",
            "tokenizers",
            "descriptions",
            "model",
            "training",
            "evaluation",
        ), key
        if node.is_materializable:
            assert node.code_version, key
            assert spec is None or spec.kinds, key
    assert graph.get(dg.AssetKey("general_corpus_sample")).partitions_def.get_partition_keys() == [
        "debian_docs",
        "gimp_help",
        "kolaw_kobill",
        "libreoffice_help",
    ]


def test_corpora_are_discovered_from_the_data_dir(data_dir, model_dir):
    (data_dir / "01_raw" / "00_korean" / "my_corpus").mkdir()
    defs = build_definitions(str(data_dir), str(model_dir), "embedded:gemma3-270m")
    assert (
        "my_corpus"
        in defs.resolve_asset_graph()
        .get(dg.AssetKey("korean_corpora"))
        .partitions_def.get_partition_keys()
    )


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports (``import x`` and ``from x import y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    return names | {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }


def test_layering_assets_never_import_assets_and_core_never_imports_dagster():
    """Asset modules share helpers through layout, readers, partitions and core, never through each other."""
    package = Path(__file__).resolve().parents[1] / "medtok_dagster"
    for module in sorted((package / "assets").glob("*.py")):
        assert not [m for m in imported_modules(module) if m.startswith("medtok_dagster.assets")], (
            module.name
        )
    for module in sorted((package / "core").glob("*.py")):
        assert not [m for m in imported_modules(module) if m.split(".")[0] == "dagster"], (
            module.name
        )
