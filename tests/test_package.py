"""The package's shape: a light public face and layers that import only downwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parent.parent


def _imports_torch(statement: str) -> bool:
    probe = f"import sys; {statement}; print('torch' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return completed.stdout.strip() == "True"


@pytest.mark.parametrize(
    "statement", ["import harness", "import harness.integrations.pytest_plugin"]
)
def test_importing_the_package_or_its_pytest_plugin_does_not_import_torch(statement):
    assert not _imports_torch(statement)


def test_touching_a_public_name_imports_what_it_needs():
    assert _imports_torch("import harness; harness.load_model")


def test_every_public_name_resolves_to_the_object_its_module_defines():
    from harness.engine.methods import power_steering
    from harness.evaluation.pipeline import run

    assert harness.power_steering is power_steering
    assert harness.run is run
    for name in harness.__all__:
        assert getattr(harness, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'telepathy'"):
        _ = harness.telepathy


def test_the_layer_contracts_hold():
    # import-linter is a dev dependency; CI runs it too, this keeps a local pytest honest.
    completed = subprocess.run(["lint-imports"], capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout[-2000:]
