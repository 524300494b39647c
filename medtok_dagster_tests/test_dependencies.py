"""The dependency pins match what the code needs."""

import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from medtok_dagster_tests.conftest import REPO


def requirement(name: str) -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == name)


def test_transformers_is_pinned_to_the_major_version_the_code_needs():
    """Scoring passes ``cache=``, uses a boolean ``logits_to_keep`` and gives ``warmup_steps`` as a
    ratio: transformers 5 behaviour that 4.x rejects or reads differently, and 6 may change."""
    spec = requirement("transformers").specifier
    assert "4.56.0" not in spec and "4.99.0" not in spec
    assert "5.0.0" in spec and "6.0.0" not in spec
    assert version("transformers") in spec
