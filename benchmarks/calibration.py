"""Calibration: MAP, MC dropout, VI, last-layer KFAC Laplace and a deep ensemble, each with and without temperature
scaling, over seeds. Prints a table, writes JSON.

For every dataset and seed: accuracy, NLL, ECE (15 bins), Brier, fit time and predict time per 10k items, and the
mean ± std over seeds. Datasets: MNIST (``../shared/data/mnist.npz``, read through ``data.load_dataset`` like any
user ``.npz``; skipped with the reason printed when it cannot be read) with 1,000 and with 10,000 class-balanced
training labels, tested on the full 10k test set; scikit-learn ``digits`` (all of its train split; its test split).

Methods (all trained with the same step budget, ``--epochs`` passes over the fitting items at ``--batch-size``):

- ``map``: the deterministic network (no dropout; one softmax). It is member 0 of the ensemble (same seed, same
  network, same minibatch order), so its fit time is that member's training time.
- ``mc_dropout``: the same architecture and seed with dropout ``--dropout`` before the last layer, kept on at test;
  mean of ``--samples`` masks.
- ``vi``: mean-field Gaussian VI (Bayes by Backprop) on the head (``--vi-bayesian``), mean of ``--samples`` draws.
- ``laplace_kfac_probit`` / ``laplace_kfac_mc``: post-hoc last-layer KFAC Laplace on the *same* trained MAP network,
  prior precision tuned by maximising the log evidence; probit (MacKay) predictive, and the MC predictive with
  ``--samples`` draws. Fit time = MAP training + Laplace fit + prior tuning; the post-hoc part is also timed alone.
- ``laplace_kfac_probit_val`` / ``laplace_kfac_mc_val``: the same Laplace with its prior precision then scaled to the
  lowest validation NLL of the probit predictive (``tune_prior_on_validation``, ``selection.prior_tuning:
  validation``; the validation split of temperature scaling, below). Fit time adds the grid search.
- ``ensemble_5``: five MAP networks (seeds ``s .. s+4``), uniform mixture.

Temperature scaling (``+TS`` rows): one temperature per method and seed, fitted on the validation NLL of the
method's predictive probabilities (``kind="probs"``), validation = a stratified ``--val-fraction`` of the labeled
training items that no method trains on. It never changes the argmax (checked: ``argmax_changed``).

Targets (Daxberger et al. 2021, "Laplace Redux"): Laplace and ensembles improve NLL and ECE over MAP at equal
accuracy (no accuracy loss beyond ``ACCURACY_TOLERANCE``); post-hoc Laplace costs < 20% of the MAP training time.

Full run (≈ 4–6 min on 2 idle CPU cores, where a training step of the MNIST MLP takes ≈ 2–3 ms; ~100k such steps
dominate). On a shared, loaded machine two intra-op threads spin against the other processes and can be 10× slower:
there, ``--threads 1`` (≈ 3–6 ms per step, ≈ 6–10 min) gives steadier timings, and the JSON records the thread count
and the load average at start and end::

    .venv/bin/python benchmarks/calibration.py

Smoke run (< 1 min; writes to the temporary folder unless ``--out`` is given)::

    .venv/bin/python benchmarks/calibration.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import cpu_name  # noqa: E402

from bayes_models import DeepEnsemble, MCDropout, MCDropoutConfig, MeanFieldVI, TemperatureScaling, VIConfig  # noqa: E402
from bayes_models.laplace import fit_laplace, tune_prior_on_validation  # noqa: E402
from bayes_models.metrics import accuracy, brier, ece, nll  # noqa: E402
from data import DatasetError, load_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
DEFAULT_DATASETS = ("mnist-1k", "mnist-10k", "digits")
METHODS = (
    "map",
    "mc_dropout",
    "vi",
    "laplace_kfac_probit",
    "laplace_kfac_mc",
    "laplace_kfac_probit_val",
    "laplace_kfac_mc_val",
    "ensemble_5",
)
ENSEMBLE_MEMBERS = 5
ECE_BINS = 15
ACCURACY_TOLERANCE = 0.005
"""'Equal accuracy': a method may lose at most this much accuracy (absolute) against MAP."""
LAPLACE_COST_TARGET = 0.20
MODEL_SEED_STRIDE = 100
"""Benchmark seed s trains its networks with seeds ``100 s + m``: the ensembles of different seeds share no member."""
QUICK = {"seeds": [0, 1], "datasets": ["digits", "mnist-1k"], "epochs": 2, "samples": 10, "test_limit": 2000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help=f"default {' '.join(DEFAULT_DATASETS)}; mnist-<n> or mnist-<n>k for n class-balanced labels, or digits",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the fitting items (default 30)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.5, help="MC dropout rate before the last layer")
    parser.add_argument("--samples", type=int, default=None, help="S for MC dropout, VI, Laplace MC (default 50)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="labeled items held out for temperature")
    parser.add_argument("--vi-bayesian", choices=["head", "all"], default="head")
    parser.add_argument(
        "--mnist-arch",
        choices=["mlp", "cnn"],
        default="mlp",
        help="mlp: 784-256-256 MLP (default); cnn: Gal et al. CNN (too slow for 2 CPU cores)",
    )
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="path of mnist.npz")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: seeds 0 1, digits and mnist-1k, 2 epochs, S=10, 2,000 MNIST test items",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/calibration.json; with --quick the temp folder)",
    )
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.seeds = args.seeds if args.seeds is not None else quick.get("seeds", [0, 1, 2])
    args.datasets = args.datasets if args.datasets is not None else quick.get("datasets", list(DEFAULT_DATASETS))
    args.epochs = args.epochs if args.epochs is not None else quick.get("epochs", 30.0)
    args.samples = args.samples if args.samples is not None else quick.get("samples", 50)
    args.test_limit = quick.get("test_limit")
    if args.out is None:
        args.out = (
            Path(tempfile.gettempdir()) / "calibration_quick.json" if args.quick else RESULTS / "calibration.json"
        )
    for name in args.datasets:
        dataset_labels(name)  # fail on a misspelt name before any training
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    return args


def dataset_labels(name: str) -> int | None:
    """``digits`` → None (all of its train split); ``mnist-1k`` / ``mnist-1000`` → 1000 labels."""
    if name == "digits":
        return None
    if name.startswith("mnist-"):
        count = name.removeprefix("mnist-")
        try:
            return int(count[:-1]) * 1000 if count.endswith("k") else int(count)
        except ValueError:
            pass
    raise SystemExit(f"unknown dataset {name!r}: expected digits, mnist-<n> or mnist-<n>k")


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Source:
    """Model-ready train pool and test set of one source, and the network settings for it."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    hidden: int
    architecture: str


def load_sources(args: argparse.Namespace) -> tuple[dict[str, Source], dict[str, str]]:
    """``{"mnist"|"digits": Source}`` for the requested datasets, and ``{dataset: reason}`` for skipped ones."""
    sources, skipped = {}, {}
    if any(name.startswith("mnist-") for name in args.datasets):
        try:
            ds = load_dataset(args.mnist)
        except DatasetError as error:
            reason = f"MNIST unavailable ({error})"
            for name in args.datasets:
                if name.startswith("mnist-"):
                    skipped[name] = reason
        else:
            x_train, x_test = torch.from_numpy(ds.x_train), torch.from_numpy(ds.x_test)
            if args.mnist_arch == "mlp":
                x_train, x_test = x_train.flatten(1), x_test.flatten(1)
            hidden = 256 if args.mnist_arch == "mlp" else 128
            d = int(np.prod(ds.feature_shape))
            arch = f"MLP {d}-{hidden}-{hidden}-{ds.n_classes}" if args.mnist_arch == "mlp" else "Gal et al. CNN"
            sources["mnist"] = Source(
                "mnist",
                x_train,
                torch.from_numpy(ds.y_train),
                x_test,
                torch.from_numpy(ds.y_test),
                ds.n_classes,
                hidden,
                arch,
            )
    if "digits" in args.datasets:
        ds = load_dataset("digits")
        sources["digits"] = Source(
            "digits",
            torch.from_numpy(ds.x_train),
            torch.from_numpy(ds.y_train),
            torch.from_numpy(ds.x_test),
            torch.from_numpy(ds.y_test),
            ds.n_classes,
            128,
            f"MLP {ds.feature_shape[0]}-128-128-{ds.n_classes}",
        )
    return sources, skipped


def balanced_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices, as equal a share of every class as ``n`` allows, drawn without replacement."""
    classes = np.unique(y)
    shares = np.full(len(classes), n // len(classes))
    shares[: n % len(classes)] += 1
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, shares, strict=True)]
    return rng.permutation(np.concatenate(picked))


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)`` index arrays: ``round(fraction · n_c)`` (at least one) items of every class c go to val."""
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        val.append(members[: max(1, round(fraction * len(members)))])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx


# ---------------------------------------------------------------------------------------------- one seed


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall-clock seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def metrics(probs_N_C: torch.Tensor, y_N: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": accuracy(probs_N_C, y_N),
        "nll": nll(probs_N_C, y_N),
        "ece": ece(probs_N_C, y_N, ECE_BINS),
        "brier": brier(probs_N_C, y_N),
    }


def model_settings(
    source: Source, feature_shape: tuple[int, ...], steps: int, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Keyword arguments shared by :class:`MCDropoutConfig` and :class:`VIConfig`."""
    return {
        "feature_shape": feature_shape,
        "n_classes": source.n_classes,
        "hidden": source.hidden,
        "depth": 2,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": seed,
    }


def warm_up(source: Source, args: argparse.Namespace) -> float:
    """Untimed tiny fit and prediction of every family, so that no timed call pays torch's lazy initialisation
    (the first fit in a process otherwise costs ~1–2 s more). Returns its seconds."""
    start = time.perf_counter()
    known = torch.nonzero(source.y_train >= 0).squeeze(1)[:128]
    x, y = source.x_train[known], source.y_train[known]
    common = model_settings(source, tuple(x.shape[1:]), 3, 0, args)
    ensemble = DeepEnsemble(MCDropoutConfig(**common, dropout=args.dropout), 2, device=args.device).fit(x, y)
    probs = ensemble.predictive_samples(x).mean(0)
    mc_dropout = MCDropout(MCDropoutConfig(**common, dropout=args.dropout), device=args.device).fit(x, y)
    mc_dropout.predictive_samples(x, 2)
    MeanFieldVI(VIConfig(**common, bayesian=args.vi_bayesian), device=args.device).fit(x, y).predictive_samples(x, 2)
    laplace = fit_laplace(ensemble.members[0].network, x, y, subset="last_layer", structure="kfac")
    laplace.predict(x, link="probit")
    laplace.predict(x, link="mc", n_samples=2)
    TemperatureScaling().fit(probs, y, kind="probs").transform(probs, kind="probs")
    return time.perf_counter() - start


def run_seed(dataset: str, source: Source, seed: int, args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """Fit every method on one dataset and seed; returns per-method rows, the Laplace cost and the settings."""
    labels = dataset_labels(dataset)
    y_pool = source.y_train.numpy()
    known = np.flatnonzero(y_pool >= 0)
    chosen = (
        known if labels is None else known[balanced_subset(y_pool[known], labels, np.random.default_rng([seed, 0]))]
    )
    fit_rel, val_rel = stratified_holdout(y_pool[chosen], args.val_fraction, np.random.default_rng([seed, 1]))
    fit_idx, val_idx = torch.from_numpy(chosen[fit_rel]), torch.from_numpy(chosen[val_rel])
    x_fit, y_fit = source.x_train[fit_idx], source.y_train[fit_idx]
    x_val, y_val = source.x_train[val_idx], source.y_train[val_idx]
    x_test, y_test = source.x_test, source.y_test
    if args.test_limit is not None:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    device = torch.device(args.device)
    steps = max(1, math.ceil(args.epochs * len(x_fit) / args.batch_size))
    S = args.samples
    common = model_settings(source, tuple(x_fit.shape[1:]), steps, MODEL_SEED_STRIDE * seed, args)
    # Ensemble of MAP networks (no dropout); member 0 is the MAP network. Members are fitted one by one, exactly as
    # DeepEnsemble.fit does, so that member 0's training time is the MAP fit time.
    ensemble = DeepEnsemble(MCDropoutConfig(**common, dropout=args.dropout), ENSEMBLE_MEMBERS, device=device)
    member_s = [timed(member.fit, x_fit, y_fit)[1] for member in ensemble.members]
    map_model, map_s = ensemble.members[0], member_s[0]
    laplace, laplace_s = timed(fit_laplace, map_model.network, x_fit, y_fit, subset="last_layer", structure="kfac")
    mc_dropout = MCDropout(MCDropoutConfig(**common, dropout=args.dropout), device=device)
    _, mc_dropout_s = timed(mc_dropout.fit, x_fit, y_fit)
    vi = MeanFieldVI(VIConfig(**common, bayesian=args.vi_bayesian), device=device)
    _, vi_s = timed(vi.fit, x_fit, y_fit)

    tuned = fit_laplace(map_model.network, x_fit, y_fit, subset="last_layer", structure="kfac")  # the same fit
    tuning, tune_s = timed(tune_prior_on_validation, tuned, x_val, y_val)

    def mc(posterior) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: posterior.predict(x, link="mc", n_samples=S, generator=torch.Generator().manual_seed(seed))

    predictors: dict[str, tuple[float, Callable[[torch.Tensor], torch.Tensor]]] = {
        "map": (map_s, lambda x: map_model.predictive_samples(x, 1)[0]),
        "mc_dropout": (mc_dropout_s, lambda x: mc_dropout.predictive_samples(x, S, seed=seed).mean(0)),
        "vi": (vi_s, lambda x: vi.predictive_samples(x, S, seed=seed).mean(0)),
        "laplace_kfac_probit": (map_s + laplace_s, lambda x: laplace.predict(x, link="probit")),
        "laplace_kfac_mc": (map_s + laplace_s, mc(laplace)),
        "laplace_kfac_probit_val": (map_s + laplace_s + tune_s, lambda x: tuned.predict(x, link="probit")),
        "laplace_kfac_mc_val": (map_s + laplace_s + tune_s, mc(tuned)),
        "ensemble_5": (sum(member_s), lambda x: ensemble.predictive_samples(x).mean(0)),
    }
    per_10k = 10_000 / len(x_test)
    rows = []
    for method, (fit_s, predict) in predictors.items():
        test_probs, predict_s = timed(predict, x_test)
        val_probs, val_s = timed(predict, x_val)
        scaler, ts_s = timed(TemperatureScaling().fit, val_probs, y_val, kind="probs")
        scaled, transform_s = timed(scaler.transform, test_probs, kind="probs")
        changed = int((scaled.argmax(-1) != test_probs.argmax(-1)).sum())
        base = {"dataset": dataset, "seed": seed, "method": method}
        rows.append(
            {
                **base,
                "temperature_scaled": False,
                **metrics(test_probs, y_test),
                "fit_s": fit_s,
                "predict_s_per_10k": predict_s * per_10k,
                "temperature": 1.0,
                "argmax_changed": 0,
            }
        )
        rows.append(
            {
                **base,
                "temperature_scaled": True,
                **metrics(scaled, y_test),
                "fit_s": fit_s + val_s + ts_s,
                "predict_s_per_10k": (predict_s + transform_s) * per_10k,
                "temperature": scaler.temperature,
                "argmax_changed": changed,
            }
        )
    cost = {
        "dataset": dataset,
        "seed": seed,
        "map_fit_s": map_s,
        "laplace_posthoc_s": laplace_s,
        "ratio": laplace_s / map_s,
        "prior_precision": float(laplace.prior_precision),
        "log_evidence": laplace.log_evidence(),
        "validation_prior_scale": tuning.scale,
        "validation_tuning_s": tune_s,
    }
    settings = {
        "architecture": source.architecture,
        "n_fit": len(x_fit),
        "n_val": len(x_val),
        "n_test": len(x_test),
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "dropout_mc": args.dropout,
        "samples": S,
        "ensemble_members": ENSEMBLE_MEMBERS,
        "vi_bayesian": args.vi_bayesian,
        "laplace": "last_layer KFAC GGN, isotropic prior precision at the maximum of log evidence (Newton, from 1.0)",
        "map": f"ensemble member 0 (no dropout, seed {MODEL_SEED_STRIDE} x seed); laplace_* use this network",
        "mc_dropout_seed": "same initial weights and minibatch order as map (seed 100 x seed)",
        "temperature_scaling": f"fitted on the {len(x_val)} validation items, kind='probs', per method and seed",
    }
    return rows, cost, settings


# ---------------------------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


SUMMARY_KEYS = ("accuracy", "nll", "ece", "brier", "fit_s", "predict_s_per_10k", "temperature")


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"], row["temperature_scaled"]), []).append(row)
    summary = []
    for (dataset, method, scaled), group in groups.items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "temperature_scaled": scaled,
            "n_seeds": len(group),
        }
        for key in SUMMARY_KEYS:
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std([r[key] for r in group])
        entry["argmax_changed_max"] = max(r["argmax_changed"] for r in group)
        summary.append(entry)
    return summary


def verdicts(rows: list[dict], costs: list[dict], datasets: list[str]) -> dict[str, Any]:
    """Each target per dataset, on the unscaled predictives (the comparison of Laplace Redux), mean over seeds."""

    def value(dataset: str, method: str, key: str, seed: int | None = None) -> float:
        picked = [
            r[key]
            for r in rows
            if r["dataset"] == dataset
            and r["method"] == method
            and not r["temperature_scaled"]
            and (seed is None or r["seed"] == seed)
        ]
        return statistics.fmean(picked)

    def improves(dataset: str, method: str, seed: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"method": method}
        for key in ("accuracy", "nll", "ece"):
            out[f"{key}_map"], out[f"{key}_method"] = (
                value(dataset, "map", key, seed),
                value(dataset, method, key, seed),
            )
        out["accuracy_delta"] = out["accuracy_method"] - out["accuracy_map"]
        out["nll_better"] = out["nll_method"] < out["nll_map"]
        out["ece_better"] = out["ece_method"] < out["ece_map"]
        out["accuracy_not_worse"] = out["accuracy_delta"] >= -ACCURACY_TOLERANCE
        out["holds"] = out["nll_better"] and out["ece_better"] and out["accuracy_not_worse"]
        return out

    result: dict[str, Any] = {}
    for method, key in (
        ("laplace_kfac_probit", "laplace"),
        ("laplace_kfac_mc_val", "laplace_validation_tuned"),
        ("ensemble_5", "ensemble"),
    ):
        target = f"{method} improves NLL and ECE over map at equal accuracy (loss <= {ACCURACY_TOLERANCE})"
        per_dataset = {}
        for dataset in datasets:
            seeds = sorted({r["seed"] for r in rows if r["dataset"] == dataset})
            entry = improves(dataset, method)
            entry["seeds_holding"] = f"{sum(improves(dataset, method, s)['holds'] for s in seeds)}/{len(seeds)}"
            per_dataset[dataset] = entry
        result[f"{key}_improves_nll_ece_over_map"] = {
            "target": target,
            "holds": all(e["holds"] for e in per_dataset.values()),
            "datasets": per_dataset,
        }
    per_dataset = {}
    for dataset in datasets:
        group = [c for c in costs if c["dataset"] == dataset]
        ratios = [c["ratio"] for c in group]
        per_dataset[dataset] = {
            "ratio_mean": statistics.fmean(ratios),
            "ratio_max": max(ratios),
            "laplace_posthoc_s_mean": statistics.fmean(c["laplace_posthoc_s"] for c in group),
            "map_fit_s_mean": statistics.fmean(c["map_fit_s"] for c in group),
            "holds": statistics.fmean(ratios) < LAPLACE_COST_TARGET,
        }
    result["laplace_posthoc_cost_under_20pct_of_map"] = {
        "target": f"post-hoc Laplace time (fit + prior tuning) / MAP training time < {LAPLACE_COST_TARGET}",
        "holds": all(e["holds"] for e in per_dataset.values()),
        "datasets": per_dataset,
    }
    return result


def print_table(summary: list[dict], settings: dict[str, dict], costs: list[dict], result: dict) -> None:
    header = f"{'method':<24}{'TS':<4}{'accuracy':>16}{'NLL':>16}{'ECE':>16}{'Brier':>16}{'fit s':>9}{'pred s/10k':>11}"
    for dataset, info in settings.items():
        print(
            f"\n{dataset}: {info['architecture']}, {info['epochs']:g} epochs = {info['steps']} steps of batch "
            f"{info['batch_size']}, fit/val/test {info['n_fit']}/{info['n_val']}/{info['n_test']}, S={info['samples']}"
        )
        print(header)
        print("-" * len(header))
        for e in (s for s in summary if s["dataset"] == dataset):
            cells = "".join(
                f"{e[f'{k}_mean']:>8.4f}±{e[f'{k}_std']:<7.4f}" for k in ("accuracy", "nll", "ece", "brier")
            )
            print(
                f"{e['method']:<24}{'+TS' if e['temperature_scaled'] else '':<4}{cells}"
                f"{e['fit_s_mean']:>9.2f}{e['predict_s_per_10k_mean']:>11.3f}"
            )
        cost = result["laplace_posthoc_cost_under_20pct_of_map"]["datasets"][dataset]
        print(
            f"Laplace post-hoc {cost['laplace_posthoc_s_mean']:.3f} s vs MAP {cost['map_fit_s_mean']:.2f} s: "
            f"ratio {cost['ratio_mean']:.3f} (max {cost['ratio_max']:.3f})"
        )
    print("\nVerdicts (means over seeds, unscaled predictives):")
    for name, verdict in result.items():
        print(f"  {name}: {'HOLDS' if verdict['holds'] else 'FAILS'}")
        for dataset, e in verdict["datasets"].items():
            if "ratio_mean" in e:
                print(f"    {dataset}: ratio {e['ratio_mean']:.3f} -> {e['holds']}")
            else:
                print(
                    f"    {dataset}: dNLL {e['nll_method'] - e['nll_map']:+.4f}, "
                    f"dECE {e['ece_method'] - e['ece_map']:+.4f}, dacc {e['accuracy_delta']:+.4f} "
                    f"-> {e['holds']} (seeds {e['seeds_holding']})"
                )


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    environment = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "threads_note": "train_map drops to 1 intra-op thread for steps under 5e7 FLOPs (bayes_models/training.py)",
        "cpu_model": cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
    print(
        f"torch {environment['torch']}, {environment['threads']} threads, {environment['cpu_model']} "
        f"({environment['cpu_count']} CPUs), load average {environment['loadavg_start'][0]:.2f}"
    )
    started = time.perf_counter()
    sources, skipped = load_sources(args)
    for dataset, reason in skipped.items():
        print(f"skipping {dataset}: {reason}")
    environment["warm_up_s"] = {name: warm_up(source, args) for name, source in sources.items()}
    rows, costs, settings = [], [], {}
    for dataset in args.datasets:
        if dataset in skipped:
            continue
        source = sources["digits" if dataset == "digits" else "mnist"]
        for seed in args.seeds:
            seed_rows, cost, settings[dataset] = run_seed(dataset, source, seed, args)
            rows += seed_rows
            costs.append(cost)
            print(f"{dataset} seed {seed}: done at {time.perf_counter() - started:.0f} s", flush=True)
    ran = [d for d in args.datasets if d in settings]
    if not ran:
        raise SystemExit("no dataset could be run")
    summary = summarise(rows)
    result = verdicts(rows, costs, ran)
    print_table(summary, settings, costs, result)
    elapsed = time.perf_counter() - started
    environment["loadavg_end"] = list(os.getloadavg())
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "benchmark": "calibration",
        "quick": args.quick,
        "args": args_json,
        "environment": environment,
        "settings": settings,
        "skipped": skipped,
        "seconds": elapsed,
        "rows": rows,
        "laplace_cost": costs,
        "summary": summary,
        "verdicts": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
