"""Label efficiency: simulated campaigns per acquisition function and seed; mean test accuracy over rounds.

    python benchmarks/label_efficiency.py --dataset digits --rounds 10 --k 10 --seeds 0 1 2 \
        --acquisitions bald random

Prints a table (mean ± std over seeds of the per-campaign mean test accuracy over rounds, and the final
accuracy) and writes ``benchmarks/results/label_efficiency_<dataset>.json``. Every campaign is a real
``simulate_campaign`` flow run writing to a throwaway workspace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--acquisitions", nargs="+", default=["bald", "random"])
    args = parser.parse_args()

    from flows.cli import _flow_context
    from flows.rounds import simulate_campaign
    from flows.settings import load_settings

    curves: dict[str, list[list[dict]]] = {name: [] for name in args.acquisitions}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workspace, _flow_context():
        for seed in args.seeds:
            for name in args.acquisitions:
                settings = load_settings(
                    None,
                    {
                        "workspace": workspace,
                        "dataset": {"name": args.dataset},
                        "campaign": {"rounds": args.rounds, "k": args.k, "initial": args.initial, "seed": seed},
                        "acquisition": {"name": name},
                    },
                )
                curves[name].append(simulate_campaign(settings))
    elapsed = time.perf_counter() - started

    table = Table(title=f"{args.dataset}: {args.rounds} rounds, k={args.k}, initial={args.initial}, seeds {args.seeds}")
    for column in ("acquisition", "mean acc over rounds", "final acc", "final NLL"):
        table.add_column(column, justify="right")
    summary = {}
    for name, runs in curves.items():
        means = [statistics.fmean(r["test_accuracy"] for r in run) for run in runs]
        finals = [run[-1]["test_accuracy"] for run in runs]
        nlls = [run[-1]["test_nll"] for run in runs]
        summary[name] = {
            "mean_accuracy_per_seed": means,
            "mean_accuracy": statistics.fmean(means),
            "final_accuracy": statistics.fmean(finals),
            "final_nll": statistics.fmean(nlls),
        }
        spread = statistics.stdev(means) if len(means) > 1 else 0.0
        table.add_row(
            name,
            f"{statistics.fmean(means):.3f} ± {spread:.3f}",
            f"{statistics.fmean(finals):.3f}",
            f"{statistics.fmean(nlls):.3f}",
        )
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"label_efficiency_{args.dataset}.json"
    out.write_text(json.dumps({"args": vars(args), "seconds": elapsed, "summary": summary, "curves": curves}, indent=2))
    print(f"wrote {out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
