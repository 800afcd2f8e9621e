"""Label efficiency on MNIST (Gal et al. 2017; Kirsch et al. 2019 protocol) through the user's code path.

    python benchmarks/al_mnist.py --seeds 0 1 2 --methods powerbald bald random batchbald predictive_entropy

20 class-balanced initial labels, 10 acquired per round, the models refit every round, test accuracy on the
10,000 test images, default settings for image data (``representation: auto`` → the pool's spectral embedding,
the default candidates and S, the whole 60k pool scored). Each campaign is a sequence of real
``labeling_round`` Prefect flow runs with the simulated oracle, writing a real MLflow and SQLite store, exactly
what ``beliefloop simulate`` runs. Prints a table and writes ``benchmarks/results/al_mnist.json`` plus a PNG of
the median accuracy curves. ``--quick``: one seed, two methods, 5 rounds.

The campaigns run in ``--workspace`` (``benchmarks/workspace/al_mnist``, git-ignored; the pool's embedding is kept
there for the next run), named after the run's start so a rerun never resumes an earlier one, and the comparison —
the PNG, the JSON, the median curves and labels to 90% / 95% per method — is logged to the same MLflow store as a run
of the experiment ``benchmark-al_mnist``: ``mlflow ui --backend-store-uri sqlite:///<workspace>/mlflow.db`` shows it
beside every round of every campaign.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import ROOT, environment, finish_parser, mnist_path
from rich.console import Console
from rich.table import Table

PUBLISHED = {  # labels to reach 90% / 95% test accuracy on MNIST as reported by Kirsch et al. (2019)
    "BALD (Gal et al. 2017)": (120, 250),
    "BatchBALD (Kirsch et al. 2019)": (90, 200),
}


def labels_to(curve: list[dict], target: float) -> int | None:
    """Labels at the first round whose test accuracy reaches ``target`` (``None`` if none does)."""
    return next((int(r["n_labeled"]) for r in curve if r["test_accuracy"] >= target), None)


def run_campaign(settings, console: Console) -> list[dict]:
    """``simulate_campaign``'s loop, with each round's wall time kept beside the round's own timings."""
    from data.store import LabelStore
    from flows.campaign_setup import prepare_campaign
    from flows.rounds import run_round

    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=True)
    rounds = []
    while store.next_round(settings.campaign_name) <= settings.campaign.rounds:
        start = time.perf_counter()
        result = run_round(settings, oracle=True)
        wall = time.perf_counter() - start
        train, score = result.get("train_seconds", 0.0), result.get("acquisition_seconds", 0.0)
        rounds.append({**result, "wall_seconds": wall, "overhead_seconds": wall - train - score})
        console.log(
            f"{settings.campaign_name} round {result['round']:>2}: {result['n_labeled']:>3} labels, "
            f"acc {result['test_accuracy']:.3f}, ECE {result['test_ece']:.3f}, wall {wall:.1f} s"
        )
    store.close()
    return rounds


def summarise(curves: list[list[dict]]) -> dict:
    def median(values):
        known = [v for v in values if v is not None]
        return statistics.median(known) if len(known) == len(values) else None

    to_90 = [labels_to(c, 0.90) for c in curves]
    to_95 = [labels_to(c, 0.95) for c in curves]
    late_ece = [max((r["test_ece"] for r in c if r["n_labeled"] >= 100), default=None) for c in curves]
    walls = [sum(r["wall_seconds"] for r in c) for c in curves]
    return {
        "labels_to_90": to_90,
        "labels_to_95": to_95,
        "median_labels_to_90": median(to_90),
        "median_labels_to_95": median(to_95),
        "max_ece_from_100_labels": late_ece,
        "campaign_wall_seconds": walls,
        "seconds_per_round": {
            part: statistics.fmean(r[f"{part}_seconds"] for c in curves for r in c)
            for part in ("wall", "train", "acquisition", "overhead")
        },
        "curves": [
            [
                {
                    "n_labeled": r["n_labeled"],
                    "accuracy": r["test_accuracy"],
                    "ece": r["test_ece"],
                    "nll": r["test_nll"],
                    "train_seconds": r.get("train_seconds", 0.0),
                    "score_seconds": r.get("acquisition_seconds", 0.0),
                    "overhead_seconds": r["overhead_seconds"],
                    "selected": r.get("selected"),
                }
                for r in c
            ]
            for c in curves
        ],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, summary in results.items():
        labels = [r["n_labeled"] for r in summary["curves"][0]]
        medians = [statistics.median(c[i]["accuracy"] for c in summary["curves"]) for i in range(len(labels))]
        seeds = len(summary["curves"])
        axis.plot(labels, medians, marker="o", markersize=3, label=f"{method} ({seeds} seed{'s' * (seeds > 1)})")
    for target in (0.90, 0.95):
        axis.axhline(target, color="grey", linewidth=0.6, linestyle="--")
    axis.set(xlabel="labels", ylabel="test accuracy (median over seeds)", ylim=(0.6, 1.0), title="MNIST")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(args, curves: dict[str, list[list[dict]]], prepare_seconds: float, *, complete: bool) -> dict:
    """Summarise the campaigns run so far and write the JSON and PNG; ``complete`` is false while seeds remain."""
    results = {method: summarise(runs) for method, runs in curves.items() if runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out.with_suffix(".png"))
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "mnist"},
        "complete": complete,
        "seeds_done": {method: args.seeds[: len(runs)] for method, runs in curves.items()},
        "environment": environment(args.device),
        "prepare_seconds": prepare_seconds,
        "published": PUBLISHED,
        "methods": results,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    return results


def log_comparison(settings, args, results: dict, stamp: str) -> str:
    """Log the comparison to the campaigns' MLflow store as a run of ``benchmark-al_mnist``; its run id."""
    from flows.tracking import CampaignTracker

    tracker = CampaignTracker(settings.tracking_uri, settings.artifact_root, "benchmark-al_mnist")
    run_id = tracker.client.create_run(tracker.experiment_id, run_name=f"al_mnist-{stamp}").info.run_id
    params = {k: str(v) for k, v in vars(args).items() if k not in ("mnist", "out")}
    summary = {}
    for method, s in results.items():
        for target in ("90", "95"):
            if s[f"median_labels_to_{target}"] is not None:
                summary[f"{method}/median_labels_to_{target}"] = s[f"median_labels_to_{target}"]
    tracker.log_batch(run_id, summary, step=0, params=params)
    for method, s in results.items():  # the median curve, one step per label count
        for i, r in enumerate(s["curves"][0]):
            median = statistics.median(c[i]["accuracy"] for c in s["curves"])
            tracker.log_batch(run_id, {f"{method}/median_test_accuracy": median}, step=r["n_labeled"])
    tracker.log_artifacts(run_id, [args.out, args.out.with_suffix(".png")])
    tracker.finish(run_id)
    return run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["powerbald", "bald", "random"])
    parser.add_argument("--rounds", type=int, default=17, help="17 rounds: 20 → 180 labels")
    parser.add_argument("--representation", default="auto", help="auto (spectral for images) or none")
    parser.add_argument("--pool-subsample", default=None, help="M items, auto or all (default: the settings', auto)")
    parser.add_argument("--family", default=None, help="model.family for every candidate (default: the settings')")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=ROOT / "benchmarks" / "workspace" / "al_mnist",
        help="the campaigns' label store, MLflow store and embedding (kept)",
    )
    args = finish_parser(parser, "al_mnist", {"seeds": [0], "methods": ["powerbald", "random"], "rounds": 5}, argv)
    mnist = mnist_path(args.mnist)
    if mnist is None:
        raise SystemExit("mnist.npz not found (expected ../shared/data/mnist.npz); pass --mnist PATH")
    import torch

    torch.set_num_threads(args.threads)
    from flows.campaign_setup import model_feature_store
    from flows.cli import _flow_context
    from flows.settings import load_settings

    console = Console()
    curves: dict[str, list[list[dict]]] = {m: [] for m in args.methods}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    args.workspace.mkdir(parents=True, exist_ok=True)
    with _flow_context():

        def settings(method: str, seed: int):
            return load_settings(
                None,
                {
                    "workspace": str(args.workspace),
                    "dataset": {"name": str(mnist)},
                    "campaign": {
                        "name": f"mnist-{method}-seed{seed}-{stamp}",
                        "rounds": args.rounds,
                        "k": 10,
                        "initial": 20,
                        "seed": seed,
                    },
                    "acquisition": {"name": method, "pool_subsample": args.pool_subsample},
                    "representation": {"name": args.representation},
                    "model": {"device": args.device, "family": args.family},
                },
            )

        start = time.perf_counter()
        model_feature_store(settings(args.methods[0], args.seeds[0]))
        prepare_seconds = time.perf_counter() - start
        console.log(f"import + representation: {prepare_seconds:.1f} s")
        for seed in args.seeds:
            for method in args.methods:
                curves[method].append(run_campaign(settings(method, seed), console))
                write_results(args, curves, prepare_seconds, complete=False)  # a stopped run keeps what it did

        results = write_results(args, curves, prepare_seconds, complete=True)
        run_id = log_comparison(settings(args.methods[0], args.seeds[0]), args, results, stamp)
    table = Table(
        title=f"MNIST, 20 initial + 10 per round, seeds {args.seeds}, representation {args.representation}, "
        f"family {args.family or 'default'}"
    )
    for column in (
        "method",
        "labels to 90%",
        "labels to 95%",
        "max ECE ≥100 labels",
        "s/round (train/score/other)",
        "campaign s",
    ):
        table.add_column(column, justify="right")
    for method, s in results.items():
        t = s["seconds_per_round"]
        table.add_row(
            method,
            f"{s['median_labels_to_90']} {s['labels_to_90']}",
            f"{s['median_labels_to_95']} {s['labels_to_95']}",
            " ".join(f"{e:.3f}" if e is not None else "-" for e in s["max_ece_from_100_labels"]),
            f"{t['wall']:.1f} ({t['train']:.1f}/{t['acquisition']:.1f}/{t['overhead']:.1f})",
            " ".join(f"{w:.0f}" for w in s["campaign_wall_seconds"]),
        )
    for name, (n90, n95) in PUBLISHED.items():
        table.add_row(name, str(n90), str(n95), "", "", "")
    console.print(table)
    console.print(
        f"wrote {args.out} and {args.out.with_suffix('.png')}; MLflow run {run_id} (experiment benchmark-al_mnist) in "
        f"{args.workspace / 'mlflow.db'}"
    )


if __name__ == "__main__":
    main()
