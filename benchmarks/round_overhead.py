"""Where a round's wall time goes: training, scoring, and everything else (issue target: the rest under 1 s per
round on digits and under 10% of a round on MNIST).

    python benchmarks/round_overhead.py --rounds 5            # digits in-process + the CLI; MNIST when found

In-process campaigns run ``labeling_round`` flow runs one after another (``benchmarks/al_mnist.py``'s loop, the
path ``beliefloop simulate`` takes) and split each round's wall time into ``train_seconds`` (fitting the
candidates), ``acquisition_seconds`` (scoring the pool) and the rest: inside the flow (evaluation, evidence, plots,
MLflow, checkpoints, label store) and around it (Prefect's flow run); "eval" is the part of it that is the test
predictive (``evaluation_seconds``). The CLI row times a whole ``beliefloop simulate`` process on digits, so
process start (imports, Prefect's temporary server, the stores) is spread over its rounds. Beside it, in the same
run, the floor under that row: a fresh interpreter that only imports the libraries a round imported here (every
top-level package from site-packages in ``sys.modules`` after the in-process campaigns), fastest of 3. MNIST uses
default settings (the pool's spectral embedding, fitted once and not counted). Prints a table and writes
``benchmarks/results/round_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, environment, finish_parser, mnist_path
from al_mnist import run_campaign
from import_time import best_import_seconds
from rich.console import Console
from rich.table import Table


def split(rounds: list[dict]) -> dict:
    """Mean seconds per round of each part, over the rounds after the first (which pays one-off costs), and the
    first round alone."""

    def parts(rows: list[dict]) -> dict[str, float]:
        mean = {
            key: statistics.fmean(r.get(field, 0.0) for r in rows)
            for key, field in (
                ("wall", "wall_seconds"),
                ("train", "train_seconds"),
                ("score", "acquisition_seconds"),
                ("overhead", "overhead_seconds"),
                ("in_flow", "round_seconds"),
                ("evaluation", "evaluation_seconds"),
            )
        }
        mean["in_flow_overhead"] = mean["in_flow"] - mean["train"] - mean["score"]
        mean["flow_run"] = mean["wall"] - mean["in_flow"]
        mean["overhead_share"] = mean["overhead"] / mean["wall"]
        return mean

    return {"first_round": parts(rounds[:1]), "later_rounds": parts(rounds[1:] or rounds), "rounds": rounds}


def in_process(dataset: str, rounds: int, workspace: str, device: str, console: Console) -> tuple[dict, float]:
    """A simulated campaign of ``rounds`` flow runs; returns its split and the seconds spent preparing features."""
    from flows.campaign_setup import model_feature_store
    from flows.settings import load_settings

    settings = load_settings(
        None,
        {
            "workspace": workspace,
            "dataset": {"name": dataset},
            "campaign": {"rounds": rounds, "seed": 0},
            "model": {"device": device},
        },
    )
    start = time.perf_counter()
    model_feature_store(settings)
    prepare = time.perf_counter() - start
    return split(run_campaign(settings, console)), prepare


def cli(rounds: int, workspace: Path) -> dict:
    """One ``beliefloop simulate --dataset digits`` process: wall time, and its rounds' own timings."""
    out = workspace / "rounds.json"
    command = [sys.executable, "-m", "flows", "simulate", "--dataset", "digits", "--rounds", str(rounds)]
    start = time.perf_counter()
    subprocess.run([*command, "--workspace", str(workspace), "--json", str(out)], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    results = json.loads(out.read_text())
    train = sum(r.get("train_seconds", 0.0) for r in results)
    score = sum(r["acquisition_seconds"] for r in results)
    return {
        "wall": wall,
        "train": train,
        "score": score,
        "evaluation": sum(r.get("evaluation_seconds", 0.0) for r in results),
        "overhead_per_round": (wall - train - score) / len(results),
        "rounds": results,
    }


def library_modules() -> list[str]:
    """The top-level packages from site-packages this process has imported (torch, prefect, mlflow, ...)."""
    sites = [Path(p).resolve() for p in site.getsitepackages()]
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or name.startswith("_") or not file:  # _private: extension modules of a package
            continue
        if any(Path(file).resolve().is_relative_to(s) for s in sites):
            names.append(name)
    return sorted(names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mnist", type=Path, default=None)
    parser.add_argument("--no-mnist", action="store_true", help="digits only")
    args = finish_parser(parser, "round_overhead", {"rounds": 2, "no_mnist": True}, argv)
    import torch

    torch.set_num_threads(args.threads)
    from flows.cli import _flow_context

    console = Console(width=120)
    mnist = None if args.no_mnist else mnist_path(args.mnist)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with _flow_context():
            results["digits"], _ = in_process("digits", args.rounds, f"{tmp}/digits", args.device, console)
            if mnist is not None:
                results["mnist"], prepare = in_process(str(mnist), args.rounds, f"{tmp}/mnist", args.device, console)
                results["mnist"]["prepare_seconds"] = prepare
        results["cli_digits"] = cli(args.rounds, Path(tmp) / "cli")
    libraries = library_modules()
    results["library_imports"] = {"seconds": best_import_seconds(", ".join(libraries), 3), "modules": libraries}

    table = Table(title=f"Seconds per round (mean of rounds 2-{args.rounds}; round 1 in brackets)")
    columns = ("data", "wall", "train", "score", "other", "eval", "in flow", "flow run", "other/wall")
    for column in (*columns, "other-eval/wall"):
        table.add_column(column, justify="right")
    for name in ("digits", "mnist"):
        if name in results:
            later, first = results[name]["later_rounds"], results[name]["first_round"]
            table.add_row(
                name,
                *(
                    f"{later[key]:.2f} ({first[key]:.2f})"
                    for key in ("wall", "train", "score", "overhead", "evaluation", "in_flow_overhead", "flow_run")
                ),
                f"{later['overhead_share']:.0%}",
                f"{(later['overhead'] - later['evaluation']) / later['wall']:.0%}",
            )
    c, n = results["cli_digits"], args.rounds
    table.add_row(
        f"digits, CLI ({n} rounds)",
        *(f"{c[key] / n:.2f}" for key in ("wall", "train", "score")),
        f"{c['overhead_per_round']:.2f}",
        f"{c['evaluation'] / n:.2f}",
        "",
        "",
        f"{c['overhead_per_round'] * n / c['wall']:.0%}",
        f"{(c['overhead_per_round'] * n - c['evaluation']) / c['wall']:.0%}",
    )
    console.print(table)
    imports = results["library_imports"]["seconds"]
    console.print(
        f"The CLI row's floor: importing its {len(results['library_imports']['modules'])} libraries alone takes "
        f"{imports:.2f} s (fresh interpreter, fastest of 3), {imports / n:.2f} s a round of its "
        f"{c['overhead_per_round']:.2f} s other; the rest {c['overhead_per_round'] - imports / n:.2f} s a round."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "mnist"},
        "environment": environment(args.device),
        **results,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
