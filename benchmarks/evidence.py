"""Evidence vs generalisation: does the Laplace log evidence rank candidate networks like their test log likelihood?

For each dataset (MNIST with 1,000 labels, a seeded class-balanced subset of the train split; scikit-learn's
``digits`` with all of its train split) every candidate MLP (width × depth × weight decay) is trained to its MAP
by :class:`bayes_models.LaplaceClassifier` and given

* **log Z (last layer, KFAC)** — the model-selection evidence used by the rounds (``flows/models.py``): a
  last-layer KFAC Laplace whose isotropic prior precision is tuned by maximising ``log Z`` (marglik);
* **log Z (all weights, KFAC)** and **log Z (all weights, diag)**: post-hoc Laplace over every weight of the same
  MAP network, prior precision tuned the same way (``--all-weights`` picks which; the diag GGN is built from
  per-example Jacobians and is the slowest part of the run);

and two test log likelihoods (mean log predictive probability per test item, ``= −NLL``): the last-layer
Laplace's probit predictive (primary) and the MAP network's softmax. The all-weights KFAC probit predictive is
also scored (``--no-all-predictive`` skips it). Reported per dataset: the Spearman rank correlation
(``scipy.stats.spearmanr``) of each evidence against each test LL, which candidate the evidence selects, whether
its test LL is within ``--ll-tolerance`` nats of the best candidate's (each evidence judged by its own
predictive: last-layer KFAC by the LL-KFAC probit, all-weights KFAC by the all-KFAC probit, all-weights diag by the
MAP's softmax, its own linearised predictive being too slow to score here), and the Bayes-factor reading of every
candidate against the selected one (Kass & Raftery). Evidence values compare only within one structure.

Reference: Immer et al. (2021), "Scalable Marginal Likelihood Estimation for Model Selection in Deep Learning"
(they tune the prior *during* training; here the MAP is trained with Adam weight decay and the prior is tuned
post hoc, the laplace-torch ``optimize_prior_precision`` recipe the rounds use).

Full run (MNIST and digits, 12 candidates each: widths 32/128/512 × depths 1/2 × weight decay 1e-4/1e-2; about
5–6 min on 2 CPU cores shared with other work, about half of it the all-weights diag evidence of the width-512
candidates; ``--all-weights kfac`` takes it down to about 3 min)::

    python benchmarks/evidence.py

Smoke run (< 1 min): ``python benchmarks/evidence.py --quick``. Times assume ``OMP_WAIT_POLICY=PASSIVE``, which
the script sets unless the environment already has a value (spinning OpenMP workers on shared cores made the
same run 10× slower here). Writes ``benchmarks/results/evidence.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere
# Before torch loads libgomp: with spinning OpenMP workers, 2 intra-op threads on 2 cores that other processes share
# run small ops 10–25× slower than 1 thread (measured here); sleeping workers remove that artefact. An explicit
# OMP_WAIT_POLICY in the environment wins; the value used is recorded in the JSON.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import MNIST_CANDIDATES, environment, finish_parser, mnist_path  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bayes_models import LaplaceClassifier, LaplaceConfig, bayes_factor_table  # noqa: E402
from bayes_models.laplace import fit_laplace  # noqa: E402
from bayes_models.metrics import accuracy, nll  # noqa: E402
from data import load_dataset  # noqa: E402
from data.datasets import DatasetError  # noqa: E402

QUICK = {
    "datasets": ["mnist", "digits"],
    "mnist_labels": 300,
    "widths": [16, 64],
    "depths": [1, 2],
    "weight_decays": [1e-4],
    "steps": 100,
    "test_size": 1000,
}
EVIDENCES = {
    "logz_ll_kfac": "log Z LL-KFAC",
    "logz_all_kfac": "log Z all-KFAC",
    "logz_all_diag": "log Z all-diag",
}
"""Evidence kinds (LL = last layer, all = all weights) and their column labels."""
TEST_LLS = {
    "test_ll_laplace": "LL-KFAC probit",
    "test_ll_map": "MAP softmax",
    "test_ll_all_kfac": "all-KFAC probit",
}
"""Test log likelihoods (mean log predictive per item) and the predictive each is of."""
console = Console(width=max(160, shutil.get_terminal_size((160, 24)).columns))


@dataclass(frozen=True)
class Candidate:
    hidden: int
    depth: int
    weight_decay: float

    @property
    def name(self) -> str:
        return f"w{self.hidden}-d{self.depth}-wd{self.weight_decay:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits"], choices=["mnist", "digits"])
    parser.add_argument("--mnist", type=Path, default=None, help="path of mnist.npz (default: /work/shared/data)")
    parser.add_argument("--mnist-labels", type=int, default=1000, help="class-balanced labeled MNIST subset")
    parser.add_argument("--digits-labels", type=int, default=0, help="labeled digits items (0: the whole train split)")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 1e-2], help="Adam L2 (MAP prior)")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps of the MAP fit (LaplaceConfig.steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--all-weights",
        nargs="*",
        default=["kfac", "diag"],
        choices=["kfac", "diag"],
        help="all-weights Laplace structures to score besides last-layer KFAC (none: pass the flag alone)",
    )
    parser.add_argument(
        "--no-all-predictive",
        dest="all_predictive",
        action="store_false",
        help="skip the all-weights KFAC probit predictive on the test set",
    )
    parser.add_argument("--test-size", type=int, default=0, help="test items scored (0: all; a seeded subset else)")
    parser.add_argument("--ll-tolerance", type=float, default=0.05, help="nats/item: 'selected is near the best'")
    parser.add_argument("--seed", type=int, default=0, help="label subset, network initialisation and minibatches")
    return finish_parser(parser, "evidence", QUICK, argv)


# ---------------------------------------------------------------------------------------------- helpers


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded class-balanced subset of ``n`` rows (remainder to the lowest classes)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    chosen = []
    for c, m in zip(classes, per_class, strict=True):
        rows = np.flatnonzero(y == c)
        if m > len(rows):
            raise ValueError(f"class {c} has {len(rows)} rows, {m} requested")
        chosen.append(rng.choice(rows, size=m, replace=False))
    return np.sort(np.concatenate(chosen))


def load(name: str, args: argparse.Namespace) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """``({x, y, x_test, y_test}, None)`` with flattened float32 features, or ``(None, reason)`` when skipped."""
    if name == "mnist":
        path = mnist_path(args.mnist)
        if path is None:
            return None, f"mnist.npz not found (looked in {args.mnist or [str(p) for p in MNIST_CANDIDATES]})"
        ds = load_dataset(path)
        rows = balanced_subset(ds.y_train, args.mnist_labels, args.seed)
    else:
        ds = load_dataset("digits", split_seed=args.seed)
        n = args.digits_labels or len(ds.y_train)
        rows = balanced_subset(ds.y_train, n, args.seed) if n < len(ds.y_train) else np.arange(len(ds.y_train))
    test_rows = np.arange(len(ds.y_test))
    if args.test_size and args.test_size < len(test_rows):
        test_rows = np.sort(np.random.default_rng(args.seed + 1).choice(test_rows, args.test_size, replace=False))
    data = {
        "x": torch.from_numpy(ds.x_train[rows].reshape(len(rows), -1)),
        "y": torch.from_numpy(ds.y_train[rows]),
        "x_test": torch.from_numpy(ds.x_test[test_rows].reshape(len(test_rows), -1)),
        "y_test": torch.from_numpy(ds.y_test[test_rows]),
        "n_classes": torch.tensor(ds.n_classes),
    }
    return data, None


@torch.no_grad()
def map_probs(network: torch.nn.Module, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    device = next(network.parameters()).device
    network.eval()
    return torch.cat([torch.softmax(network(x[i : i + batch].to(device)), -1) for i in range(0, len(x), batch)])


def n_params(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


# ---------------------------------------------------------------------------------------------- candidates


def evaluate(candidate: Candidate, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Fit one candidate (MAP + last-layer KFAC Laplace, prior tuned) and score its evidences and test LLs."""
    x, y, xt, yt = data["x"], data["y"], data["x_test"], data["y_test"]
    config = LaplaceConfig(
        feature_shape=(x.shape[1],),
        n_classes=int(data["n_classes"]),
        hidden=candidate.hidden,
        depth=candidate.depth,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=candidate.weight_decay,
        subset="last_layer",
        structure="kfac",
        seed=args.seed,
    )
    start = time.perf_counter()
    model = LaplaceClassifier(config, device=args.device).fit(x, y)
    fit_seconds = time.perf_counter() - start
    laplace = model.laplace
    assert laplace is not None
    yt_dev = yt.to(model.device)
    probs_map = map_probs(model.network, xt)
    probs_la = laplace.predict(xt, link="probit")
    row: dict[str, Any] = {
        "candidate": candidate.name,
        "hidden": candidate.hidden,
        "depth": candidate.depth,
        "weight_decay": candidate.weight_decay,
        "n_params": n_params(model.network),
        "fit_seconds": fit_seconds,
        "train_log_lik_per_item": laplace.log_likelihood / len(x),
        "logz_ll_kfac": model.log_evidence(),
        "prior_precision_ll_kfac": float(laplace.prior_precision),
        "test_ll_laplace": -nll(probs_la, yt_dev),
        "test_ll_map": -nll(probs_map, yt_dev),
        "test_acc_laplace": accuracy(probs_la, yt_dev),
        "test_acc_map": accuracy(probs_map, yt_dev),
    }
    for structure in args.all_weights:
        start = time.perf_counter()
        full = fit_laplace(model.network, x.to(model.device), y.to(model.device), subset="all", structure=structure)
        row[f"logz_all_{structure}"] = full.log_evidence()
        row[f"prior_precision_all_{structure}"] = float(full.prior_precision)
        row[f"all_{structure}_seconds"] = time.perf_counter() - start
        if structure == "kfac" and args.all_predictive:
            start = time.perf_counter()
            probs_all = full.predict(xt, link="probit")
            row["test_ll_all_kfac"] = -nll(probs_all, yt_dev)
            row["test_acc_all_kfac"] = accuracy(probs_all, yt_dev)
            row["all_kfac_predict_seconds"] = time.perf_counter() - start
    return row


def spearman(a: list[float], b: list[float]) -> dict[str, float | None]:
    ok = [(u, v) for u, v in zip(a, b, strict=True) if math.isfinite(u) and math.isfinite(v)]
    if len(ok) < 3:
        return {"rho": None, "p_value": None, "n": len(ok)}
    result = spearmanr([u for u, _ in ok], [v for _, v in ok])
    rho, p = float(result.statistic), float(result.pvalue)
    return {"rho": rho if math.isfinite(rho) else None, "p_value": p if math.isfinite(p) else None, "n": len(ok)}


def selection(rows: list[dict[str, Any]], evidence_key: str, ll_key: str, tolerance: float) -> dict[str, Any]:
    """The candidate of highest evidence vs the candidate of highest test LL (candidates with a non-finite
    evidence or test LL are left out and counted)."""
    finite = [r for r in rows if math.isfinite(r[evidence_key]) and math.isfinite(r[ll_key])]
    if not finite:
        return {
            "evidence": evidence_key,
            "test_ll": ll_key,
            "selected": None,
            "n_candidates": 0,
            "n_non_finite": len(rows),
            "within_tolerance": False,
            "gap_nats_per_item": None,
        }
    n_bad, rows = len(rows) - len(finite), finite
    chosen = max(rows, key=lambda r: r[evidence_key])
    best = max(rows, key=lambda r: r[ll_key])
    ranked = sorted(rows, key=lambda r: -r[ll_key])
    gap = best[ll_key] - chosen[ll_key]
    return {
        "evidence": evidence_key,
        "test_ll": ll_key,
        "selected": chosen["candidate"],
        "selected_test_ll": chosen[ll_key],
        "best": best["candidate"],
        "best_test_ll": best[ll_key],
        "gap_nats_per_item": gap,
        "tolerance": tolerance,
        "within_tolerance": bool(gap <= tolerance),
        "selected_rank_by_test_ll": 1 + ranked.index(chosen),
        "n_candidates": len(rows),
        "n_non_finite": n_bad,
    }


def warm_up(data: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """An untimed tiny fit, so first-call costs (lazy kernel and ``torch.func`` set-up) are in no candidate's time."""
    x, y = data["x"][:64], data["y"][:64]
    config = LaplaceConfig(
        feature_shape=(x.shape[1],), n_classes=int(data["n_classes"]), hidden=16, depth=1, steps=5, seed=args.seed
    )
    model = LaplaceClassifier(config, device=args.device).fit(x, y)
    for structure in args.all_weights:
        fit_laplace(model.network, x.to(model.device), y.to(model.device), subset="all", structure=structure)


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    data, reason = load(name, args)
    if data is None:
        console.print(f"[yellow]skipping {name}: {reason}[/yellow]")
        return {"skipped": reason}
    warm_up(data, args)
    candidates = [Candidate(w, d, wd) for wd in args.weight_decays for d in args.depths for w in args.widths]
    console.print(
        f"[bold]{name}[/bold]: {len(data['y'])} labels, {len(data['y_test'])} test items, {len(candidates)} candidates"
    )
    rows = []
    for candidate in candidates:
        row = evaluate(candidate, data, args)
        rows.append(row)
        console.print(
            f"  {row['candidate']:>18}  log Z(LL) {row['logz_ll_kfac']:10.1f}  test LL {row['test_ll_laplace']:.4f}"
            f"  acc {row['test_acc_laplace']:.3f}  ({row['fit_seconds']:.1f} s)"
        )
    evidence_keys = [k for k in EVIDENCES if k in rows[0]]
    ll_keys = [k for k in TEST_LLS if k in rows[0]]
    correlations = {
        f"{e} vs {t}": spearman([r[e] for r in rows], [r[t] for r in rows]) for e in evidence_keys for t in ll_keys
    }
    selections = {
        e: selection(rows, e, "test_ll_laplace" if e == "logz_ll_kfac" else _own_ll(e, ll_keys), args.ll_tolerance)
        for e in evidence_keys
    }
    factors = {
        e: [vars(b) for b in bayes_factor_table({r["candidate"]: r[e] for r in rows})]
        for e in evidence_keys
        if all(math.isfinite(r[e]) for r in rows)
    }
    primary = correlations["logz_ll_kfac vs test_ll_laplace"]
    show(name, rows, evidence_keys, correlations, selections, factors.get("logz_ll_kfac", []))
    return {
        "skipped": None,
        "n_labels": len(data["y"]),
        "n_test": len(data["y_test"]),
        "rows": rows,
        "spearman": correlations,
        "selection": selections,
        "bayes_factors": factors,
        "primary": {
            "spearman_rho": primary["rho"],
            "p_value": primary["p_value"],
            "selected_within_tolerance": selections["logz_ll_kfac"]["within_tolerance"],
            "gap_nats_per_item": selections["logz_ll_kfac"]["gap_nats_per_item"],
        },
    }


def _own_ll(evidence_key: str, ll_keys: list[str]) -> str:
    """The test LL a structure's evidence is judged against: its own predictive where scored, else the MAP's."""
    own = {"logz_all_kfac": "test_ll_all_kfac"}.get(evidence_key)
    return own if own in ll_keys else "test_ll_map"


def show(
    name: str,
    rows: list[dict[str, Any]],
    evidence_keys: list[str],
    correlations: dict[str, dict[str, Any]],
    selections: dict[str, dict[str, Any]],
    factors: list[dict[str, Any]],
) -> None:
    reading = {f["candidate"]: f for f in factors}
    selected = selections["logz_ll_kfac"]["selected"]
    best = selections["logz_ll_kfac"]["best"]
    title = f"{name}: evidence vs test LL per item (★ selected by log Z LL-KFAC, ▲ best test LL; LA = LL-KFAC probit)"
    table = Table(title=title)
    columns = ["candidate", "params", *(EVIDENCES[k] for k in evidence_keys), "δ LL", "log BF", "reading"]
    columns += ["test LL LA", "test LL MAP", "acc LA", "sel?", "fit s"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in sorted(rows, key=lambda r: -r["logz_ll_kfac"]):
        bf = reading.get(r["candidate"], {})
        table.add_row(
            r["candidate"],
            f"{r['n_params']:,}",
            *(f"{r[k]:.1f}" for k in evidence_keys),
            f"{r['prior_precision_ll_kfac']:.3g}",
            f"{bf.get('log_bayes_factor', float('nan')):.1f}",
            str(bf.get("reading", "")),
            f"{r['test_ll_laplace']:.4f}" + (" ▲" if r["candidate"] == best else ""),
            f"{r['test_ll_map']:.4f}",
            f"{r['test_acc_laplace']:.3f}",
            "★" if r["candidate"] == selected else "",
            f"{r['fit_seconds']:.1f}",
        )
    console.print(table)
    rho = Table(title=f"{name}: Spearman ρ (evidence vs test LL) and evidence-based selection")
    for column in ("evidence", "test LL", "ρ", "p", "n", "selected", "gap to best (nats)", "within tol?", "rank"):
        rho.add_column(column, justify="right")
    for key, c in correlations.items():
        e, t = key.split(" vs ")
        s = selections[e] if selections[e]["test_ll"] == t and selections[e]["selected"] is not None else None
        rho.add_row(
            EVIDENCES[e],
            TEST_LLS[t],
            "n/a" if c["rho"] is None else f"{c['rho']:+.3f}",
            "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}",
            str(c["n"]),
            s["selected"] if s else "",
            f"{s['gap_nats_per_item']:.4f}" if s else "",
            str(s["within_tolerance"]) if s else "",
            f"{s['selected_rank_by_test_ll']}/{s['n_candidates']}" if s else "",
        )
    console.print(rho)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    results["environment"] = environment(args.device)
    results["datasets"] = {}
    for name in args.datasets:
        try:
            results["datasets"][name] = run_dataset(name, args)
        except DatasetError as error:
            console.print(f"[yellow]skipping {name}: {error}[/yellow]")
            results["datasets"][name] = {"skipped": str(error)}
    verdicts = {}
    for name, result in results["datasets"].items():
        if result.get("skipped"):
            continue
        p = result["primary"]
        verdicts[name] = {
            "spearman_rho": p["spearman_rho"],
            "rho_positive": p["spearman_rho"] is not None and p["spearman_rho"] > 0,
            "n_candidates": len(result["rows"]),
            "at_least_8_candidates": len(result["rows"]) >= 8,
            "selected_within_tolerance": p["selected_within_tolerance"],
            "gap_nats_per_item": p["gap_nats_per_item"],
            "tolerance": args.ll_tolerance,
        }
    results["verdicts"] = verdicts
    results["summary"] = {
        name: {"spearman_rho": v["spearman_rho"], "selected_within_tolerance": v["selected_within_tolerance"]}
        for name, v in verdicts.items()
    }
    results["seconds"] = time.perf_counter() - started
    for name, v in verdicts.items():
        console.print(
            f"[bold]{name}[/bold]: Spearman ρ(log Z last-layer KFAC, test LL) = "
            f"{'n/a' if v['spearman_rho'] is None else format(v['spearman_rho'], '+.3f')} over {v['n_candidates']} "
            f"candidates; evidence-selected candidate within {v['tolerance']} nats/item of the best test LL: "
            f"{v['selected_within_tolerance']} (gap {v['gap_nats_per_item']:.4f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {args.out} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
