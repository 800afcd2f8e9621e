"""When the stopping signal fires, and what stopping there costs: stabilising predictions on real campaigns.

    python benchmarks/stopping.py --data digits --seeds 0 1 2 --rounds 30
    python benchmarks/stopping.py --data mnist --seeds 0 1 2 --rounds 25

Simulated campaigns with default settings (``labeling_round`` flow runs, as ``beliefloop simulate`` runs them) go
on past the point where the stopping signal (``stopping.*``: Cohen's κ between consecutive rounds' predicted
classes on 1,000 unlabelled pool items, ≥ 0.99 for 3 rounds in a row) fires. Per seed: the labels when it fired,
the test accuracy then, at the campaign's end and the best of any later round, and the labels that going on to the
end cost. A signal that fires early leaves accuracy on the table; one that never fires saves nothing. Prints a
table and writes ``benchmarks/results/stopping_<data>.json`` with every round's κ and accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import ROOT, environment, finish_parser, mnist_path
from al_mnist import run_campaign
from rich.console import Console
from rich.table import Table


def summarise(curve: list[dict]) -> dict:
    """Where the campaign's stopping note first appeared, and the accuracy then against the rest of the campaign."""
    fired = next((i for i, r in enumerate(curve) if r.get("stopping_note")), None)
    final = curve[-1]["test_accuracy"]
    summary = {
        "labels_at_stop": None,
        "accuracy_at_stop": None,
        "final_labels": int(curve[-1]["n_labeled"]),
        "final_accuracy": final,
        "best_accuracy_after_stop": None,
        "labels_saved": 0,
    }
    if fired is not None:
        summary |= {
            "labels_at_stop": int(curve[fired]["n_labeled"]),
            "accuracy_at_stop": curve[fired]["test_accuracy"],
            "best_accuracy_after_stop": max(r["test_accuracy"] for r in curve[fired:]),
            "labels_saved": int(curve[-1]["n_labeled"] - curve[fired]["n_labeled"]),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--mnist", type=Path, default=None)
    args = finish_parser(parser, "stopping", {"seeds": [0], "rounds": 5}, argv)
    if args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"stopping_{args.data}.json")
    dataset = "digits"
    if args.data == "mnist":
        mnist = mnist_path(args.mnist)
        if mnist is None:
            raise SystemExit("mnist.npz not found (expected ../shared/data/mnist.npz); pass --mnist PATH")
        dataset = str(mnist)
    import torch

    torch.set_num_threads(args.threads)
    from flows.cli import _flow_context
    from flows.settings import load_settings

    console = Console()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, _flow_context():
        for seed in args.seeds:
            name = f"stopping-{args.data}-seed{seed}-{Path(tmp).name}"
            workspace = (
                ROOT / "benchmarks" / "workspace" / "al_mnist" if args.data == "mnist" else Path(tmp) / str(seed)
            )
            settings = load_settings(  # MNIST reuses al_mnist's workspace, where the pool's embedding is kept
                None,
                {
                    "workspace": str(workspace),
                    "dataset": {"name": dataset},
                    "campaign": {"name": name, "rounds": args.rounds, "seed": seed},
                    "model": {"device": args.device},
                },
            )
            curve = run_campaign(settings, console)
            runs.append(
                {
                    "seed": seed,
                    **summarise(curve),
                    "curve": [
                        {
                            "n_labeled": r["n_labeled"],
                            "test_accuracy": r["test_accuracy"],
                            "stop_set_agreement": r.get("stop_set_agreement"),
                            "stable": bool(r.get("stopping_note")),
                        }
                        for r in curve
                    ],
                }
            )
    table = Table(title=f"Stopping signal on {args.data}: default settings, {args.rounds} rounds of 10 labels")
    for column in ("seed", "labels at stop", "acc at stop", "acc at end", "best acc after", "labels saved"):
        table.add_column(column, justify="right")
    for r in runs:
        stopped = r["labels_at_stop"] is not None
        table.add_row(
            str(r["seed"]),
            str(r["labels_at_stop"]) if stopped else "never",
            f"{r['accuracy_at_stop']:.3f}" if stopped else "-",
            f"{r['final_accuracy']:.3f} ({r['final_labels']})",
            f"{r['best_accuracy_after_stop']:.3f}" if stopped else "-",
            str(r["labels_saved"]),
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "mnist"},
        "environment": environment(args.device),
        "runs": runs,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
