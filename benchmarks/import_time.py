"""Import time of the learner (``import learner``) against torch alone, in fresh interpreters; best of N.

    python benchmarks/import_time.py --repeats 5

Prints the table and writes ``benchmarks/results/import_time.json``. The target (issue 13) is under 1 s; torch's
own import is the floor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import ROOT, environment

CODE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
MODULES = ("torch", "pandas", "learner")


def best_import_seconds(module: str, repeats: int) -> float:
    """The fastest of ``repeats`` imports of ``module``, each in a fresh interpreter run from the repository."""
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", CODE.format(module=module)], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return min(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "import_time.json")
    args = parser.parse_args(argv)
    seconds = {module: best_import_seconds(module, args.repeats) for module in MODULES}
    for module, value in seconds.items():
        print(f"import {module:<8} {value:.2f} s (best of {args.repeats})")
    over_torch = seconds["learner"] - seconds["torch"]
    verdict = "met" if seconds["learner"] < 1.0 else "not met"
    print(f"learner over torch: {over_torch:.2f} s; target import learner < 1 s: {verdict}")
    payload = {"seconds": seconds, "learner_over_torch": over_torch, "target_met": verdict == "met"}
    args.out.write_text(json.dumps({**payload, "environment": environment("cpu")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
