"""The maths packages and the learner are a library: importing them pulls in neither Prefect nor MLflow (nor, for
the learner, the flows)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["bayes_models", "acquisition", "representation", "learner"])
def test_library_packages_do_not_import_orchestration(package):
    code = f"import sys, {package}; print(sorted(m for m in ('prefect', 'mlflow', 'flows') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


LEARNER_MAY_IMPORT = {"learner", "bayes_models", "acquisition", "representation", "numpy", "torch", "pandas"}


def test_learner_imports_only_the_maths_and_array_libraries():
    """Statically, every import in ``learner/`` is the standard library or one of ``LEARNER_MAY_IMPORT``."""
    import ast
    from pathlib import Path

    found = {}
    for path in (Path(__file__).resolve().parents[1] / "learner").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.name)
    assert found, "no imports found: wrong folder?"
    outside = {m: f for m, f in found.items() if m not in LEARNER_MAY_IMPORT | sys.stdlib_module_names}
    assert outside == {}
