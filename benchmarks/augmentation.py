"""What random shifts and rotations of the labelled images do for the CNN that trains on pixels.

    OMP_NUM_THREADS=1 python benchmarks/augmentation.py --threads 1

The Gal et al. CNN that ``representation: none`` trains (and ``auto`` on pools under ``auto_min_pool`` items),
MC dropout with the default recipe (500 Adam steps, weight decay 1e-4, S = 100 draws), fitted on ``n`` random
MNIST training images (``../shared/data/mnist.npz``, read like any user ``.npz``) with ``augment`` on (each
minibatch shifted by up to 2 pixels and turned by up to 10°: ``bayes_models.augment``) and off, the same images,
seed and initial weights; test accuracy, NLL and ECE on the 10,000 test images, and the fit's seconds. Prints a
table and writes ``benchmarks/results/augmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import environment, finish_parser, mnist_path
from rich.console import Console
from rich.table import Table

from bayes_models.mc_dropout import MCDropout, MCDropoutConfig
from bayes_models.metrics import accuracy, ece, nll
from data import load_dataset


def fit_and_test(data, n: int, seed: int, augment: bool, device: str) -> dict:
    rows = np.random.default_rng(seed).choice(len(data.y_train), n, replace=False)
    x, y = torch.from_numpy(data.x_train[rows]), torch.from_numpy(data.y_train[rows]).long()
    config = MCDropoutConfig(tuple(data.feature_shape), data.n_classes, seed=seed, augment=augment)
    start = time.perf_counter()
    model = MCDropout(config, device=device).fit(x, y)
    seconds = time.perf_counter() - start
    probs = model.predictive_samples(torch.from_numpy(data.x_test), 100, seed=seed, consistent=True).mean(0).cpu()
    targets = torch.from_numpy(data.y_test).long()
    return {
        "labels": n,
        "seed": seed,
        "augment": augment,
        "accuracy": accuracy(probs, targets),
        "nll": nll(probs, targets),
        "ece": ece(probs, targets),
        "fit_seconds": seconds,
    }


def _cell(row: dict, key: str, digits: int = 3) -> str:
    """``off → on (on per seed)`` of one measure."""
    seeds = " / ".join(f"{v:.{digits}f}" for v in row[f"{key}_on_per_seed"])
    return f"{row[f'{key}_off']:.{digits}f} → {row[f'{key}_on']:.{digits}f} ({seeds})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[60, 100, 180])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mnist", type=Path, default=None)
    args = finish_parser(parser, "augmentation", {"labels": [20], "seeds": [0]}, argv)
    torch.set_num_threads(args.threads)
    console = Console()
    path = mnist_path(args.mnist)
    if path is None:
        console.print("MNIST not found (../shared/data/mnist.npz or --mnist): nothing measured")
        return
    data = load_dataset(path)
    runs = []
    for n in args.labels:
        for seed in args.seeds:
            for augment in (False, True):
                runs.append(fit_and_test(data, n, seed, augment, args.device))
                r = runs[-1]
                console.log(f"{n} labels, seed {seed}, augment {augment}: accuracy {r['accuracy']:.4f}")
    table = Table(title="Gal CNN on MNIST pixels: augmentation off → on (mean over seeds; per seed in brackets)")
    for column in ("labels", "accuracy", "NLL", "ECE", "fit s"):
        table.add_column(column, justify="right")
    summary = []
    for n in args.labels:
        row = {"labels": n}
        for key in ("accuracy", "nll", "ece", "fit_seconds"):
            for augment in (False, True):
                values = [r[key] for r in runs if r["labels"] == n and r["augment"] is augment]
                row[f"{key}_{'on' if augment else 'off'}"] = statistics.mean(values)
                row[f"{key}_{'on' if augment else 'off'}_per_seed"] = values
        summary.append(row)
        cells = [_cell(row, "accuracy"), _cell(row, "nll"), _cell(row, "ece"), _cell(row, "fit_seconds", 1)]
        table.add_row(str(n), *cells)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment(args.device)}
    result |= {"summary": summary, "runs": runs}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
