"""Label efficiency: simulated campaigns per acquisition function and seed; mean test accuracy over rounds.

    OMP_NUM_THREADS=1 python benchmarks/label_efficiency.py --learner --dataset digits --rounds 10 --k 10 \
        --seeds 0 1 2 3 4 --acquisitions bald random

Prints a table (mean ± std over seeds of the per-campaign mean test accuracy over rounds, the final accuracy, and
per seed whether the first acquisition beats each other one) and writes ``benchmarks/results/label_efficiency.json``
with ``--learner`` (in-process ``learner.simulate`` campaigns on the features a flow would use), else
``label_efficiency_<dataset>.json`` (real ``simulate_campaign`` flow runs writing to a throwaway workspace). Both
paths take the settings a user gets by default and queue the same items (``tests/learner/test_learner_flow.py``);
``--family`` and ``--params`` (a params.yaml) change them for an ablation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: this checkout's packages
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see belief_update.py)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def learner_campaign(settings) -> list[dict]:
    """One simulated campaign with ``learner.simulate`` on the campaign's own features, seed labels and test split."""
    import numpy as np

    from data import balanced_seed_rows
    from flows.campaign_setup import model_feature_store
    from flows.models import learner_for
    from learner import simulate

    features = model_feature_store(settings)
    train, test = np.asarray(features.rows_train), np.asarray(features.rows_test)
    y = np.asarray(features.targets[train])
    c = settings.campaign
    history = simulate(
        learner_for(settings, n_classes=len(features.classes)),
        np.asarray(features.features[train]),
        y,
        np.asarray(features.features[test]),
        np.asarray(features.targets[test]),
        initial=balanced_seed_rows(y, c.initial, len(features.classes), c.seed),
        k=c.k,
        rounds=c.rounds,
        ids=features.ids[train].tolist(),
    )
    return [{**dataclasses.asdict(r), "n_queued": len(r.queued)} for r in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--acquisitions", nargs="+", default=["bald", "random"])
    parser.add_argument("--samples", type=int, default=None, help="posterior draws S (default: the settings' 20)")
    parser.add_argument("--family", default=None, help="model family (default: the settings' mc_dropout)")
    parser.add_argument("--params", type=Path, default=None, help="a params.yaml of settings (ablations)")
    parser.add_argument("--learner", action="store_true", help="in-process learner campaigns instead of flow runs")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: see above)")
    args = parser.parse_args()

    from flows.cli import _flow_context
    from flows.rounds import simulate_campaign
    from flows.settings import load_settings

    curves: dict[str, list[list[dict]]] = {name: [] for name in args.acquisitions}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workspace, contextlib.nullcontext() if args.learner else _flow_context():
        for seed in args.seeds:
            for name in args.acquisitions:
                settings = load_settings(
                    args.params,
                    {
                        "workspace": workspace,
                        "dataset": {"name": args.dataset},
                        "campaign": {"rounds": args.rounds, "k": args.k, "initial": args.initial, "seed": seed},
                        "acquisition": {"name": name, "samples": args.samples},
                        **({"model": {"family": args.family}} if args.family else {}),
                    },
                )
                run = learner_campaign(settings) if args.learner else simulate_campaign(settings)
                curves[name].append(
                    [{key: r[key] for key in ("round", "n_labeled", "test_accuracy", "test_nll")} for r in run]
                )
                print(f"seed {seed} {name}: mean acc {statistics.fmean(r['test_accuracy'] for r in run):.3f}")
    elapsed = time.perf_counter() - started

    title = f"{args.dataset}: {args.rounds} rounds, k={args.k}, initial={args.initial}, seeds {args.seeds}"
    table = Table(title=title + (" (learner)" if args.learner else " (flows)"))
    first = args.acquisitions[0]
    for column in ("acquisition", "mean acc over rounds", "per seed", "final acc", "final NLL", f"{first} ahead"):
        table.add_column(column, justify="right")
    summary = {}
    for name, runs in curves.items():
        means = [statistics.fmean(r["test_accuracy"] for r in run) for run in runs]
        finals = [run[-1]["test_accuracy"] for run in runs]
        nlls = [run[-1]["test_nll"] for run in runs]
        ahead = [a > b for a, b in zip(summary.get(first, {}).get("mean_accuracy_per_seed", means), means, strict=True)]
        summary[name] = {
            "mean_accuracy_per_seed": means,
            "mean_accuracy": statistics.fmean(means),
            "sd_over_seeds": statistics.stdev(means) if len(means) > 1 else 0.0,
            "final_accuracy": statistics.fmean(finals),
            "final_nll": statistics.fmean(nlls),
        }
        if name != first:
            summary[name][f"seeds_{first}_ahead"] = sum(ahead)
        table.add_row(
            name,
            f"{summary[name]['mean_accuracy']:.3f} ± {summary[name]['sd_over_seeds']:.3f}",
            " / ".join(f"{m:.3f}" for m in means),
            f"{statistics.fmean(finals):.3f}",
            f"{statistics.fmean(nlls):.3f}",
            "" if name == first else f"{sum(ahead)} of {len(ahead)}",
        )
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / ("label_efficiency.json" if args.learner else f"label_efficiency_{args.dataset}.json")
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"args": {**arguments, "out": str(out)}, "seconds": elapsed, "summary": summary, "curves": curves}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
