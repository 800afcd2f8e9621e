"""The maths packages are a library: importing them pulls in neither Prefect nor MLflow."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["bayes_models", "acquisition", "representation"])
def test_maths_packages_do_not_import_orchestration(package):
    code = f"import sys, {package}; print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
