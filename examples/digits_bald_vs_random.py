# %% [markdown]
# # BALD against random sampling on digits, with the in-process learner
#
# 20 class-balanced initial labels, then 10 labels a round chosen by BALD (or at random), the model refit every
# round: MC dropout with the evidence choosing among three widths, on the standardised pixels — the settings a
# campaign on digits gets by default, so these are the curves of `benchmarks/label_efficiency.py`. Run as a script or
# cell by cell (`# %%`); it saves the learning curves as a PNG.
#
#     OMP_NUM_THREADS=1 python examples/digits_bald_vs_random.py --seeds 0 1 2
#
# `--quick` is a two-round smoke run.

# %%
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from data import balanced_seed_rows, load_dataset
from learner import ActiveLearner, simulate

parser = argparse.ArgumentParser(description="BALD vs random learning curves on digits")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--quick", action="store_true", help="2 rounds, short training: a smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".png"))
args = parser.parse_args()
rounds, steps = (2, 50) if args.quick else (args.rounds, 500)

# %% The data: digits' train split is the pool, its test split the held-out set. (To train on features learnt from
# the pool instead, fit `representation.SpectralEmbedding` on `x_pool` and use its `embedding()` / `transform`.)
digits = load_dataset("digits")
x_pool, y_pool, x_test, y_test = digits.x_train, digits.y_train, digits.x_test, digits.y_test
candidates = [{"name": "h64-d1", "hidden": 64, "depth": 1}, {"name": "h128-d2"}, {"name": "h256-d2", "hidden": 256}]

# %% One simulated campaign per acquisition and seed: the oracle answers from the held-back labels.
curves = {}
for acquisition in ("bald", "random"):
    for seed in args.seeds:
        learner = ActiveLearner("mc_dropout", acquisition, candidates, seed=seed, steps=steps, device="cpu")
        initial = balanced_seed_rows(y_pool, 20, 10, seed)
        history = simulate(learner, x_pool, y_pool, x_test, y_test, initial=initial, k=10, rounds=rounds)
        curves.setdefault(acquisition, []).append([(r.n_labeled, r.test_accuracy) for r in history])
        print(f"{acquisition} seed {seed}: " + " ".join(f"{acc:.3f}" for _, acc in curves[acquisition][-1]))

# %% Learning curves: mean over seeds, the band between the lowest and highest seed.
fig, ax = plt.subplots(figsize=(6, 4))
for acquisition, runs in curves.items():
    labels = np.array([n for n, _ in runs[0]])
    acc = np.array([[a for _, a in run] for run in runs])
    ax.plot(labels, acc.mean(0), marker="o", label=f"{acquisition} (mean acc {acc.mean():.3f})")
    ax.fill_between(labels, acc.min(0), acc.max(0), alpha=0.2)
ax.set(xlabel="labels", ylabel="test accuracy", title=f"digits: BALD vs random, seeds {args.seeds}")
ax.legend()
ax.grid(alpha=0.3)
fig.savefig(args.out, dpi=120, bbox_inches="tight")
print(f"wrote {args.out}")
