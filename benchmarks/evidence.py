"""Evidence vs generalisation: does the Laplace log evidence rank candidate networks like their test log likelihood?

For each dataset (MNIST with 1,000 labels, a seeded class-balanced subset of the train split; scikit-learn's
``digits`` with all of its train split) and each seed, 12 candidate MLPs (width × depth × two prior settings) are
fitted by :class:`bayes_models.LaplaceClassifier` in two ways:

* **marglik** (the default): marginal-likelihood training (Immer et al. 2021) with a layer-wise or a scalar prior
  precision (the two prior settings; ``--priors`` may also name a stated prior ``std=S``, trained and evidenced under
  ``N(0, S²)`` and never tuned); evidence = what model selection compares by default, the conditional evidence
  ``log p(D₂|D₁)`` of the labels outside a seeded half ``D₁`` of them given ``D₁``, of the final network under its
  trained prior with the exact GGN's determinants (``Laplace.ggn_conditional_log_evidence``); the marginal
  ``log Z`` with the exact GGN (``log_evidence_marginal``) and with the all-weights KFAC beside it; its
  own predictive = the classifier's default (``LaplaceConfig.predictive``, ``predictive_prior``, ``link``): a
  last-layer KFAC Laplace under a last-layer precision re-tuned on its own ``log Z``, probit link. The other
  predictives of the same network and prior are scored beside it (``alternatives``): the own with the MC link (100
  draws, ``own_mc``), the own under the trained last-layer precision (``trained_prior``), the last-layer full-GGN
  Laplace (MC link), and the all-weights
  KFAC linearised predictive with the probit link (the own predictive before) and with the MC link (100 draws of
  the linearised logits ``N(f, J H⁻¹ Jᵀ)``), and last (it rescales the prior) the own predictive under the prior
  scaled on validation NLL, as ``selection.prior_tuning: validation`` does (``validation``: a second fit without a
  held-out 20% of the labels, ``learner.candidates.tune_prior_scale``). ``--marglik-peak-lr`` trains with a
  cosine-decayed learning rate from that peak instead of the constant ``--lr``, ``--marglik-updates`` with that many
  prior updates (ablations);
* **MAP** (the recipe before): Adam with weight decay 1e-4 or 1e-2 (the two prior settings), then a post-hoc
  last-layer KFAC Laplace whose scalar prior precision is tuned on log Z; its own predictive = that Laplace's probit.
  The all-weights KFAC log Z of the same MAP network (prior tuned post hoc) is scored too.

Per dataset and seed: the Spearman ρ (``scipy.stats.spearmanr``) of the evidence against each candidate's own
predictive test log likelihood (mean log predictive probability per test item, ``= −NLL``), the rank (by test LL)
of the candidate the evidence selects and its test-LL gap to the best candidate (nats/item), the wall-time ratio of
marglik to MAP fits of the same candidates (each pair fitted back to back, so both see the same machine load), and the
NLL / ECE of the Laplace predictive against the point (softmax) predictive of the same network and of the MAP network.
``datasets.<name>`` holds the means over seeds beside the per-seed figures; the JSON is rewritten after every seed.

Full run (MNIST and digits, 3 seeds, 12 candidates: widths 32/128/512 × depths 1/2 × 2 priors; 14 min on 2 CPU
cores shared with other work, load average 5–8)::

    OMP_NUM_THREADS=1 python benchmarks/evidence.py --threads 1

The default grid's two prior settings are both tuned by the evidence (layer-wise or scalar), so its candidates differ
mostly in architecture. Two other grids, kept as options, make them differ more: ``--priors layerwise std=1`` (the
tuned prior against a stated N(0, 1) on every weight, which the evidence then compares by Bayes factors) and
``--widths 8 64 512`` (a width that under-fits). The default grid stays the issue's figure of record.

Smoke run (< 1 min): ``python benchmarks/evidence.py --quick``. Times assume ``OMP_WAIT_POLICY=PASSIVE``, which the
script sets unless the environment already has a value. Writes ``benchmarks/results/evidence.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere
# Before torch loads libgomp: spinning OpenMP workers on shared cores made small ops 10–25× slower (measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import MNIST_CANDIDATES, environment, finish_parser, mnist_path  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bayes_models import LaplaceClassifier, LaplaceConfig  # noqa: E402
from bayes_models.laplace import Laplace, fit_laplace  # noqa: E402
from bayes_models.metrics import ece, nll  # noqa: E402
from data import load_dataset  # noqa: E402
from data.datasets import DatasetError  # noqa: E402
from learner.candidates import tune_prior_scale, validation_rows  # noqa: E402

QUICK = {
    "datasets": ["digits"],
    "seeds": [0],
    "widths": [16, 64],
    "depths": [1],
    "steps": 100,
    "test_size": 300,
}
METHODS = ("marglik", "map")
console = Console(width=max(160, shutil.get_terminal_size((160, 24)).columns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits"], choices=["mnist", "digits"])
    parser.add_argument("--mnist", type=Path, default=None, help="path of mnist.npz (default: /work/shared/data)")
    parser.add_argument("--mnist-labels", type=int, default=1000, help="class-balanced labeled MNIST subset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label subset, init, minibatches")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--priors", nargs="+", default=["layerwise", "scalar"], help="marglik prior structures, or std=S (stated)"
    )
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 1e-2], help="MAP's Adam L2")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps of either fit (LaplaceConfig.steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--marglik-peak-lr", type=float, default=None, help="marglik: a cosine decay from this peak instead of --lr"
    )
    parser.add_argument(
        "--marglik-updates", type=int, default=LaplaceConfig.marglik_updates, help="marglik: prior updates per fit"
    )
    parser.add_argument("--test-size", type=int, default=5000, help="test items scored (0: all; a seeded subset)")
    return finish_parser(parser, "evidence", QUICK, argv)


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded class-balanced subset of ``n`` rows (remainder to the lowest classes)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=m, replace=False) for c, m in zip(classes, per_class, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def load(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | str:
    """``{x, y, x_test, y_test, n_classes}`` (flattened float32 features), or the reason it is skipped."""
    if name == "mnist":
        path = mnist_path(args.mnist)
        if path is None:
            return f"mnist.npz not found (looked in {args.mnist or [str(p) for p in MNIST_CANDIDATES]})"
        ds = load_dataset(path)
        rows = balanced_subset(ds.y_train, args.mnist_labels, seed)
    else:
        ds = load_dataset("digits", split_seed=seed)
        rows = np.arange(len(ds.y_train))
    test_rows = np.arange(len(ds.y_test))
    if args.test_size and args.test_size < len(test_rows):
        test_rows = np.sort(np.random.default_rng(seed + 1).choice(test_rows, args.test_size, replace=False))
    return {
        "x": torch.from_numpy(ds.x_train[rows].reshape(len(rows), -1)),
        "y": torch.from_numpy(ds.y_train[rows]),
        "x_test": torch.from_numpy(ds.x_test[test_rows].reshape(len(test_rows), -1)),
        "y_test": torch.from_numpy(ds.y_test[test_rows]),
        "n_classes": ds.n_classes,
    }


@torch.no_grad()
def softmax_probs(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    network.eval()
    return torch.softmax(network(x.to(next(network.parameters()).device)), -1)


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"test_ll": -nll(probs, y), "ece": ece(probs, y)}


@torch.no_grad()
def linearised_mc(laplace: Laplace, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``probs[N, C]``: the mean softmax of ``n`` draws of the linearised logits ``N(f(x; θ*), J H⁻¹ Jᵀ)`` per item
    (laplace-torch's ``pred_type="glm", link_approx="mc"``; the distribution of ``Laplace.predict(link="mc")``
    without its forward-mode pass per weight sample)."""
    f_mean, f_cov = (t.double() for t in laplace.functional_posterior(x))
    jitter = 1e-9 * f_cov.diagonal(dim1=1, dim2=2).mean() * torch.eye(f_cov.shape[-1], dtype=f_cov.dtype)
    chol = torch.linalg.cholesky(f_cov + jitter.to(f_cov.device))
    eps = torch.randn(n, *f_mean.shape, generator=torch.Generator().manual_seed(seed), dtype=f_mean.dtype)
    f = f_mean + torch.einsum("ncd,snd->snc", chol, eps.to(f_mean.device))
    return torch.softmax(f, -1).mean(0).float()


def prior_config(prior: str) -> dict[str, Any]:
    """``LaplaceConfig`` fields of a marglik prior setting: a prior structure, or ``std=S`` (a stated prior)."""
    if prior.startswith("std="):
        return {"prior_std": float(prior.removeprefix("std="))}
    return {"prior_structure": prior}


def fit(method: str, width: int, depth: int, prior: str | float, data: dict[str, Any], seed: int, args) -> dict:
    """One candidate fitted one way: evidence, own-predictive test LL / ECE, softmax test LL / ECE, fit seconds."""
    x, y, xt, yt = data["x"], data["y"], data["x_test"], data["y_test"]
    common = dict(feature_shape=(x.shape[1],), n_classes=data["n_classes"], hidden=width, depth=depth)
    common |= dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed)
    if method == "marglik":
        config = LaplaceConfig(
            **common,
            training="marglik",
            **prior_config(prior),
            subset="all",
            structure="kfac",
            marglik_peak_lr=args.marglik_peak_lr,
            marglik_updates=args.marglik_updates,
        )
    else:
        config = LaplaceConfig(**common, training="map", weight_decay=prior, subset="last_layer", structure="kfac")
    start = time.perf_counter()
    model = LaplaceClassifier(config, device=args.device).fit(x, y)
    seconds = time.perf_counter() - start
    yt = yt.to(model.device)
    # marglik: the classifier's default predictive; MAP: its last-layer KFAC probit (as before)
    laplace = scores(model.predict(xt) if method == "marglik" else model.predict(xt, link="probit"), yt)
    point = scores(softmax_probs(model.network, xt), yt)
    row = {
        "method": method,
        "candidate": f"w{width}-d{depth}-{prior if method == 'marglik' else f'wd{prior:g}'}",
        "hidden": width,
        "depth": depth,
        "prior": prior,
        "fit_seconds": seconds,
        "log_evidence": model.log_evidence(),  # marglik: replaced below by the exact-GGN evidence
        "prior_precision": model.laplace.prior_precision.tolist(),
        "test_ll": laplace["test_ll"],
        "ece": laplace["ece"],
        "softmax_test_ll": point["test_ll"],
        "softmax_ece": point["ece"],
    }
    if method == "marglik":  # the exact-GGN evidence (the default), KFAC's beside it; other predictives
        start = time.perf_counter()
        row["log_evidence_kfac"] = row["log_evidence"]
        found = model.laplace.ggn_conditional_log_evidence(x.to(model.device), y)
        row["log_evidence"], row["log_evidence_marginal"] = found.log_evidence, found.log_z
        row["evidence_seconds"] = time.perf_counter() - start
        xt_dev = xt.to(model.device)
        row["predictive"] = f"{config.predictive}/{config.link}"
        last_layer = Laplace(
            model.network,
            subset="last_layer",
            structure="full",
            prior_precision=model.predictive_laplace.prior_precision,
        ).fit(x.to(model.device), y.to(model.device))
        generator = torch.Generator(model.device).manual_seed(0)
        trained_prior = Laplace(
            model.network,
            subset="last_layer",
            structure="kfac",
            prior_precision=model.laplace.prior_precision.reshape(-1)[-1],
        ).fit(x.to(model.device), y.to(model.device))
        row["alternatives"] = {
            "own_mc": scores(model.predict(xt_dev, link="mc"), yt),
            "trained_prior": scores(trained_prior.predict(xt_dev, link=config.link), yt),
            "last_layer_full_mc": scores(last_layer.predict(xt_dev, link="mc", generator=generator), yt),
            "kfac_probit": scores(model.laplace.predict(xt_dev, link="probit"), yt),
            "kfac_mc": scores(linearised_mc(model.laplace, xt_dev, 100, seed), yt),
        }
        # selection.prior_tuning: validation — the prior's scale tuned on a held-out 20% of the labels (a second fit
        # without them), applied to this fit's prior; last, as it changes the model's prior
        held = validation_rows([f"{i:06d}" for i in range(len(y))], seed)
        tuning = tune_prior_scale(lambda: LaplaceClassifier(config, device=args.device), x, y, held)
        model.scale_prior(tuning.scale)
        row["alternatives"]["validation"] = scores(model.predict(xt), yt) | {"prior_scale": tuning.scale}
    if method == "map":  # the same MAP network's all-weights evidence, prior tuned post hoc
        x_dev, y_dev = x.to(model.device), y.to(model.device)
        row["log_evidence_all_kfac"] = fit_laplace(
            model.network, x_dev, y_dev, subset="all", structure="kfac"
        ).log_evidence()
    return row


def spearman(a: list[float], b: list[float]) -> float | None:
    rho = float(spearmanr(a, b).statistic)
    return rho if math.isfinite(rho) else None


def selection(rows: list[dict[str, Any]], evidence_key: str, alternative: str | None = None) -> dict[str, Any]:
    """The candidate of highest evidence against the one of highest own-predictive test LL (or that of the
    ``alternative`` predictive)."""
    if alternative is not None:
        rows = [{**r, **r["alternatives"][alternative]} for r in rows]
    chosen = max(rows, key=lambda r: r[evidence_key])
    ranked = sorted(rows, key=lambda r: -r["test_ll"])
    return {
        "spearman": spearman([r[evidence_key] for r in rows], [r["test_ll"] for r in rows]),
        "selected": chosen["candidate"],
        "best": ranked[0]["candidate"],
        "selected_rank": 1 + ranked.index(chosen),
        "selected_ll_gap": ranked[0]["test_ll"] - chosen["test_ll"],
        "selected_test_ll": chosen["test_ll"],
        "selected_ece": chosen["ece"],
        "selected_softmax_test_ll": chosen["softmax_test_ll"],
        "selected_softmax_ece": chosen["softmax_ece"],
    }


def run_seed(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = load(name, seed, args)
    if isinstance(data, str):
        return {"skipped": data}
    short = argparse.Namespace(**{**vars(args), "steps": 10})  # an untimed fit each way: first-call set-up costs
    fit("marglik", 8, 1, args.priors[0], data, seed, short)
    fit("map", 8, 1, args.weight_decays[0], data, seed, short)
    grid = [(w, d, i) for d in args.depths for w in args.widths for i in range(2)]
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for width, depth, i in grid:  # each pair back to back: both fits see the same machine load
        for method, prior in (("marglik", args.priors[i]), ("map", args.weight_decays[i])):
            row = fit(method, width, depth, prior, data, seed, args)
            rows[method].append(row)
            console.print(
                f"  {name} seed {seed} {method:>7} {row['candidate']:>20}  evidence {row['log_evidence']:10.1f}  "
                f"test LL {row['test_ll']:.4f} (softmax {row['softmax_test_ll']:.4f})  ECE {row['ece']:.3f}  "
                f"({row['fit_seconds']:.1f} s)"
            )
    marglik, map_ = rows["marglik"], rows["map"]
    # The point predictive of the MAP network of the same architecture (weight decay 1e-4 and 1e-2 alike).
    map_point = {
        "test_ll": statistics.mean(r["softmax_test_ll"] for r in map_),
        "ece": statistics.mean(r["softmax_ece"] for r in map_),
    }
    return {
        "skipped": None,
        "n_labels": len(data["y"]),
        "n_test": len(data["y_test"]),
        "rows": rows,
        "marglik": selection(marglik, "log_evidence"),
        "marglik_marginal_evidence": selection(marglik, "log_evidence_marginal"),
        "marglik_kfac_evidence": selection(marglik, "log_evidence_kfac"),
        "marglik_alternatives": {a: selection(marglik, "log_evidence", a) for a in marglik[0]["alternatives"]},
        "map_last_layer": selection(map_, "log_evidence"),
        "map_all_weights": selection(map_, "log_evidence_all_kfac"),
        "time_ratio": sum(r["fit_seconds"] for r in marglik) / sum(r["fit_seconds"] for r in map_),
        "time_ratio_max": max(a["fit_seconds"] / b["fit_seconds"] for a, b in zip(marglik, map_, strict=True)),
        "calibration": {
            "marglik_laplace": _means(marglik, "test_ll", "ece"),
            "marglik_softmax": _means(marglik, "softmax_test_ll", "softmax_ece"),
            **{
                f"marglik_{a}": _means([r["alternatives"][a] for r in marglik], "test_ll", "ece")
                for a in marglik[0]["alternatives"]
            },
            "map_laplace": _means(map_, "test_ll", "ece"),
            "map_softmax": {"nll": -map_point["test_ll"], "ece": map_point["ece"]},
        },
    }


def _means(rows: list[dict[str, Any]], ll_key: str, ece_key: str) -> dict[str, float]:
    """Mean NLL and ECE over the candidates."""
    return {"nll": -statistics.mean(r[ll_key] for r in rows), "ece": statistics.mean(r[ece_key] for r in rows)}


def summarise(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the figures the targets are stated in (and each seed's value beside them)."""
    seeds = [s for s in per_seed.values() if not s.get("skipped")]
    if not seeds:
        return {"skipped": next(iter(per_seed.values()))["skipped"]}

    def mean(path: tuple[str, ...]) -> dict[str, Any]:
        values = []
        for s in seeds:
            v: Any = s
            for key in path:
                v = v[key]
            values.append(v)
        finite = [v for v in values if v is not None]
        return {"mean": statistics.mean(finite) if finite else None, "per_seed": values}

    out: dict[str, Any] = {"skipped": None, "n_seeds": len(seeds), "n_candidates": len(seeds[0]["rows"]["marglik"])}
    for key in ("spearman", "selected_rank", "selected_ll_gap"):
        out[key] = mean(("marglik", key))["mean"]
        out[f"{key}_per_seed"] = mean(("marglik", key))["per_seed"]
        out[f"map_{key}"] = mean(("map_last_layer", key))["mean"]
        out[f"map_all_weights_{key}"] = mean(("map_all_weights", key))["mean"]
    out["alternatives"] = {
        a: {
            key: mean(("marglik_alternatives", a, key))["mean"]
            for key in ("spearman", "selected_rank", "selected_ll_gap")
        }
        for a in seeds[0]["marglik_alternatives"]
    }
    for evidence in ("marginal", "kfac"):
        out[f"{evidence}_evidence"] = {
            key: mean((f"marglik_{evidence}_evidence", key))["mean"]
            for key in ("spearman", "selected_rank", "selected_ll_gap")
        }
    out["evidence_seconds"] = statistics.mean(r["evidence_seconds"] for s in seeds for r in s["rows"]["marglik"])
    out["time_ratio"] = mean(("time_ratio",))["mean"]
    out["time_ratio_per_seed"] = mean(("time_ratio",))["per_seed"]
    out["time_ratio_max_candidate"] = max(s["time_ratio_max"] for s in seeds)
    out["calibration"] = {
        k: {m: mean(("calibration", k, m))["mean"] for m in ("nll", "ece")} for k in seeds[0]["calibration"]
    }
    out["selected_calibration"] = {
        "marglik_laplace": {
            "nll": -mean(("marglik", "selected_test_ll"))["mean"],
            "ece": mean(("marglik", "selected_ece"))["mean"],
        },
        "marglik_softmax": {
            "nll": -mean(("marglik", "selected_softmax_test_ll"))["mean"],
            "ece": mean(("marglik", "selected_softmax_ece"))["mean"],
        },
        "map_laplace": {
            "nll": -mean(("map_last_layer", "selected_test_ll"))["mean"],
            "ece": mean(("map_last_layer", "selected_ece"))["mean"],
        },
        "map_softmax": {
            "nll": -mean(("map_last_layer", "selected_softmax_test_ll"))["mean"],
            "ece": mean(("map_last_layer", "selected_softmax_ece"))["mean"],
        },
    }
    cal = out["calibration"]
    out["targets"] = {
        "spearman_at_least_0.8": out["spearman"] >= 0.8,
        "selected_in_top_2": all(r <= 2 for r in out["selected_rank_per_seed"]),
        "gap_at_most_0.02": out["selected_ll_gap"] <= 0.02,
        "time_ratio_at_most_2": out["time_ratio"] <= 2,
        **{
            f"{name}_nll_ece_no_worse_than_map": cal[key]["nll"] <= cal["map_softmax"]["nll"]
            and cal[key]["ece"] <= cal["map_softmax"]["ece"]
            for name, key in (("laplace", "marglik_laplace"), ("validation_tuned_laplace", "marglik_validation"))
        },
    }
    return out


def show(name: str, summary: dict[str, Any]) -> None:
    table = Table(
        title=f"{name}: selection by evidence, {summary['n_candidates']} candidates, {summary['n_seeds']} seeds"
    )
    for column in ("training → evidence", "Spearman ρ", "selected rank", "gap (nats/item)"):
        table.add_column(column, justify="right")
    rows = [
        (
            "marglik → exact GGN log p(D₂|D₁) (own: last-layer KFAC, re-tuned δ_L, probit)",
            {k: summary[k] for k in summary["alternatives"]["kfac_mc"]},
        ),
        *((f"marglik → exact GGN log p(D₂|D₁) (predictive {a})", v) for a, v in summary["alternatives"].items()),
        ("marglik → exact GGN log Z (own predictive)", summary["marginal_evidence"]),
        ("marglik → all-KFAC log Z (own predictive)", summary["kfac_evidence"]),
        ("MAP → last-layer KFAC", {k: summary["map_" + k] for k in summary["alternatives"]["kfac_mc"]}),
        ("MAP → all-KFAC", {k: summary["map_all_weights_" + k] for k in summary["alternatives"]["kfac_mc"]}),
    ]
    for label, figures in rows:
        rho = figures["spearman"]
        table.add_row(
            label,
            "n/a" if rho is None else f"{rho:+.3f}",
            f"{figures['selected_rank']:.2f}",
            f"{figures['selected_ll_gap']:.4f}",
        )
    console.print(table)
    cal = summary["calibration"]
    console.print(
        f"time ratio marglik/MAP {summary['time_ratio']:.2f}; exact-GGN evidence {summary['evidence_seconds']:.1f} s "
        "per candidate; NLL / ECE (mean over candidates): "
        + ", ".join(f"{k} {v['nll']:.3f} / {v['ece']:.3f}" for k, v in cal.items())
    )
    console.print(f"targets: {summary['targets']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment(args.device),
        "datasets": {},
        "per_seed": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        results["per_seed"][name] = {}
        for seed in args.seeds:
            try:
                results["per_seed"][name][str(seed)] = run_seed(name, seed, args)
            except DatasetError as error:
                results["per_seed"][name][str(seed)] = {"skipped": str(error)}
            results["datasets"][name] = summarise(results["per_seed"][name])
            results["seconds"] = time.perf_counter() - started
            args.out.write_text(json.dumps(results, indent=2))  # after every seed: a cut-short run keeps its part
        if not results["datasets"][name].get("skipped"):
            show(name, results["datasets"][name])
    console.print(f"wrote {args.out} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
