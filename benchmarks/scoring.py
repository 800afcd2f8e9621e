"""Scoring speed: MC-dropout sampling, streaming a large pool, BatchBALD vs top-k BALD. Prints a table, writes JSON.

Stages (each can be sized down with the flags; ``--help`` lists them):

1. **matmul** — the device's fp32 matmul rate (GFLOP/s), the yardstick for the head's cost.
2. **stream** — a synthetic ``--synthetic-n`` × 784 float16 ``.npy`` pool (written to a temporary folder, removed
   after) scored with S=20 for BALD top-100 by ``acquisition.streaming.score_pool_streaming`` with an MLP and
   consistent-mask head sampling; times at 100k / 300k / 1M items and the peak RSS while scoring (the peak mark
   is reset before scoring where Linux allows; otherwise it is the process's peak, and this stage runs before
   MNIST is loaded).
3. **mnist** — the Gal et al. (2017) CNN (``gal_cnn(1, (28, 28), 10)``, briefly trained on 1,000 labels so its
   uncertainty is not that of random weights) over the MNIST training pool: backbone-only items/s, then for
   S=20 and S=100 (a) naive: S full forward passes with dropout on (as baal's MC-dropout wrapper), on the first
   ``--naive-pool`` items, and (b) backbone once + vectorised consistent-mask head, on the whole pool. (b) is
   also given as a fraction of the limit implied by the backbone rate plus the head's FLOPs at the matmul rate:
   ``1 / (1 / backbone_rate + 2·S·H·C / matmul_flops)``. Every variant includes BALD on its samples.
4. **batchbald** — greedy BatchBALD (S=20 consistent samples of the CNN, default ``num_samples``) for batches of
   10 and 40 over a 10k pool, vs top-k BALD on the same samples.

Full run (a few minutes on 2 CPU cores, under 10): ``python benchmarks/scoring.py``; on a GPU: ``benchmarks/gpu.sh``.
Quick check: ``python benchmarks/scoring.py --tiny --out /tmp/scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import MNIST_CANDIDATES, cpu_name  # noqa: E402

from acquisition import bald, top_k  # noqa: E402
from acquisition.batch import batchbald  # noqa: E402
from acquisition.streaming import score_pool_streaming  # noqa: E402
from bayes_models import gal_cnn, mlp, resolve_device  # noqa: E402
from bayes_models.fast_head import predictive_samples_consistent  # noqa: E402
from bayes_models.mc_dropout import dropout_only  # noqa: E402
from bayes_models.training import train_map  # noqa: E402
from data.pool import iter_pool_chunks  # noqa: E402

TINY = {
    "pool": 1500,
    "naive_pool": 64,
    "synthetic_n": 30000,
    "synthetic_chunk": 5000,
    "train_steps": 5,
    "bb_pool": 400,
    "bb_batches": "3,6",
    "bb_samples": 500,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--pool", type=int, default=60000, help="MNIST pool items for backbone and (b) (max 60000)")
    parser.add_argument("--naive-pool", type=int, default=1000, help="items for the naive S-pass baseline (a)")
    parser.add_argument("--samples", default="20,100", help="S values for the MNIST comparison")
    parser.add_argument("--batch-size", type=int, default=1024, help="items per chunk for the CNN")
    parser.add_argument("--train-steps", type=int, default=100, help="Adam steps on 1,000 labels (0: random init)")
    parser.add_argument("--synthetic-n", type=int, default=1_000_000, help="rows of the synthetic float16 pool")
    parser.add_argument("--synthetic-chunk", type=int, default=5000, help="rows per streamed chunk")
    parser.add_argument("--bb-pool", type=int, default=10000, help="pool size for BatchBALD vs top-k BALD")
    parser.add_argument("--bb-batches", default="10,40", help="BatchBALD batch sizes")
    parser.add_argument("--bb-samples", type=int, default=10000, help="BatchBALD num_samples (configurations)")
    parser.add_argument("--mnist", type=Path, default=None, help="path of mnist.npz (default: ../shared/data)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="folder for the synthetic pool file")
    parser.add_argument("--stages", default="matmul,stream,mnist,batchbald", help="comma-separated stages to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="small sizes to check that everything runs (~1 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scoring.json")
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def rss_mb() -> float:
    """Current resident set size in MiB (psutil if installed, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size in MiB: ``VmHWM`` (resettable, see :func:`reset_peak_rss`), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def chunks_of(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


# ---------------------------------------------------------------------------------------------- stages


def bench_matmul(device: torch.device, min_seconds: float = 1.0) -> dict[str, float]:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3):
        reps, elapsed = 0, 0.0
        synchronize(device)
        start = time.perf_counter()
        while elapsed < min_seconds / 3:
            a @ b
            reps += 1
            synchronize(device)
            elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 * reps / elapsed / 1e9)
    return {"size": n, "gflops": best, "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def write_synthetic_pool(path: Path, n: int, d: int, seed: int, chunk: int = 10_000) -> None:
    """A float16 ``[n, d]`` .npy written with plain writes (no memmap, so no resident pages left behind)."""
    rng = np.random.default_rng(seed)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": (n, d)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_2_0(handle, header)
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            rng.standard_normal((rows, d), dtype=np.float32).astype(np.float16).tofile(handle)


def bench_stream(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    n, d, S = args.synthetic_n, 784, 20
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as folder:
        path = Path(folder) / "pool.npy"
        _, write_s = timed(lambda: write_synthetic_pool(path, n, d, args.seed), device)
        torch.manual_seed(args.seed)
        net = mlp(d, 10).to(device)
        ids = np.char.add("s", np.arange(n).astype(str))
        rss_before = rss_mb()
        peak_is_stage = reset_peak_rss()
        marks: list[tuple[int, float]] = []
        rss_samples: list[float] = []
        synchronize(device)
        start = time.perf_counter()

        def tracked() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            done = 0
            for ids_chunk, x_chunk in iter_pool_chunks(path, None, ids, args.synthetic_chunk):
                marks.append((done, time.perf_counter() - start))
                rss_samples.append(rss_mb())
                yield ids_chunk, x_chunk
                done += len(ids_chunk)
            marks.append((done, time.perf_counter() - start))

        def predict(x_chunk: torch.Tensor, samples: int) -> torch.Tensor:
            return predictive_samples_consistent(net, x_chunk.to(device, non_blocking=True), samples, seed=args.seed)

        result = score_pool_streaming(predict, tracked(), k=100, acquisition="bald", samples=S)
        synchronize(device)
        total_s = time.perf_counter() - start
        file_mb = path.stat().st_size / 2**20
    at = {}
    for mark in (100_000, 300_000, 1_000_000):
        reached = [t for done, t in marks if done >= mark]
        if reached:
            at[f"{mark // 1000}k"] = reached[0]
    return {
        "items": n,
        "features": d,
        "S": S,
        "k": 100,
        "chunk": args.synthetic_chunk,
        "file_mib": file_mb,
        "write_s": write_s,
        "seconds_at": at,
        "total_s": total_s,
        "items_per_s": n / total_s,
        "n_scored": result.n_scored,
        "top_score": float(result.scores[0]) if len(result.scores) else None,
        "rss_before_mib": rss_before,
        "rss_max_sampled_mib": max(rss_samples) if rss_samples else rss_before,
        "peak_rss_mib": peak_rss_mb(),
        "peak_rss_is_scoring_only": peak_is_stage,
        "whole_pool_probs_mib": S * n * 10 * 4 / 2**20,
    }


def load_mnist(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    candidates = [args.mnist] if args.mnist else list(MNIST_CANDIDATES)
    for path in candidates:
        if path is not None and path.exists():
            with np.load(path) as data:
                return data["x_train"], data["y_train"]
    raise SystemExit(f"mnist.npz not found (looked in {[str(p) for p in candidates]}); pass --mnist PATH")


def trained_cnn(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(args.seed)
    net = gal_cnn(1, (28, 28), 10).to(device)
    if args.train_steps > 0:
        train_map(
            net,
            x[:1000].to(device),
            y[:1000].to(device),
            steps=args.train_steps,
            batch_size=64,
            lr=1e-3,
            weight_decay=1e-4,
            generator=torch.Generator().manual_seed(args.seed),
        )
    return net.eval()


@torch.no_grad()
def run_backbone(net, x: torch.Tensor, batch: int, device: torch.device) -> None:
    net.eval()
    for chunk in chunks_of(x, batch):
        net.features(chunk.to(device))


@torch.no_grad()
def run_naive(net, x: torch.Tensor, S: int, batch: int, device: torch.device) -> None:
    with dropout_only(net):
        for chunk in chunks_of(x, batch):
            xb = chunk.to(device)
            probs = torch.softmax(torch.stack([net(xb) for _ in range(S)]), dim=-1)
            bald(probs)


@torch.no_grad()
def run_fast(net, x: torch.Tensor, S: int, batch: int, device: torch.device, seed: int) -> None:
    for chunk in chunks_of(x, batch):
        bald(predictive_samples_consistent(net, chunk.to(device), S, seed=seed))


def bench_mnist(args: argparse.Namespace, device: torch.device, gflops: float | None, net, x: torch.Tensor):
    pool = x[: args.pool]
    naive_pool = pool[: args.naive_pool]
    head = net.head[-1]
    hidden, n_classes = head.in_features, head.out_features
    run_backbone(net, pool[: args.batch_size], args.batch_size, device)  # warm-up
    # Best of three passes: the limit must not be understated by one pass that the machine's noise slowed down.
    backbone_s = min(timed(lambda: run_backbone(net, pool, args.batch_size, device), device)[1] for _ in range(3))
    backbone_rate = len(pool) / backbone_s
    out: dict[str, Any] = {
        "pool": len(pool),
        "naive_pool": len(naive_pool),
        "backbone_items_per_s": backbone_rate,
        "hidden": hidden,
        "classes": n_classes,
        "by_S": {},
    }
    for S in [int(s) for s in args.samples.split(",")]:
        torch.manual_seed(args.seed)
        _, naive_s = timed(lambda S=S: run_naive(net, naive_pool, S, args.batch_size, device), device)
        _, fast_s = timed(lambda S=S: run_fast(net, pool, S, args.batch_size, device, args.seed), device)
        naive_rate, fast_rate = len(naive_pool) / naive_s, len(pool) / fast_s
        head_flops = 2 * S * hidden * n_classes
        limit = 1 / (1 / backbone_rate + head_flops / (gflops * 1e9)) if gflops else None
        out["by_S"][str(S)] = {
            "naive_items_per_s": naive_rate,
            "fast_items_per_s": fast_rate,
            "speedup": fast_rate / naive_rate,
            "head_flops_per_item": head_flops,
            "limit_items_per_s": limit,
            "fraction_of_limit": fast_rate / limit if limit else None,
        }
    return out


def bench_batchbald(args: argparse.Namespace, device: torch.device, net, x: torch.Tensor) -> dict[str, Any]:
    S = 20
    pool = x[: args.bb_pool]
    probs = torch.cat(
        [predictive_samples_consistent(net, c.to(device), S, seed=args.seed) for c in chunks_of(pool, 1024)], 1
    )
    ids = [f"m{i:05d}" for i in range(len(pool))]
    out: dict[str, Any] = {"pool": len(pool), "S": S, "num_samples": args.bb_samples, "by_k": {}}
    for k in [int(v) for v in args.bb_batches.split(",")]:
        top, topk_s = timed(lambda k=k: top_k(bald(probs), ids, k), device)
        picks, bb_s = timed(
            lambda k=k: batchbald(
                probs, k, num_samples=args.bb_samples, generator=torch.Generator().manual_seed(args.seed), item_ids=ids
            ),
            device,
        )
        out["by_k"][str(k)] = {
            "topk_bald_s": topk_s,
            "batchbald_s": bb_s,
            "ratio": bb_s / topk_s,
            "overlap_with_topk": len(set(top.tolist()) & set(picks.tolist())),
        }
    return out


# ---------------------------------------------------------------------------------------------- report


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    table: list[tuple[str, str, str]] = []
    if "matmul" in results:
        m = results["matmul"]
        table.append(("matmul", f"fp32 {m['size']}² GFLOP/s", f"{m['gflops']:.1f}"))
    if "stream" in results:
        s = results["stream"]
        for mark, seconds in s["seconds_at"].items():
            table.append(("stream", f"{mark} items scored (S=20, BALD top-100)", f"{seconds:.1f} s"))
        table.append(("stream", f"all {s['items']:,} items", f"{s['total_s']:.1f} s ({s['items_per_s']:,.0f} items/s)"))
        table.append(
            ("stream", "peak RSS (process) / RSS before", f"{s['peak_rss_mib']:.0f} / {s['rss_before_mib']:.0f} MiB")
        )
        table.append(
            (
                "stream",
                "pool file / [S,N,C] float32 if held",
                f"{s['file_mib']:.0f} / {s['whole_pool_probs_mib']:.0f} MiB",
            )
        )
    if "mnist" in results:
        m = results["mnist"]
        table.append(("mnist", f"backbone only ({m['pool']:,} items)", f"{m['backbone_items_per_s']:,.0f} items/s"))
        for S, r in m["by_S"].items():
            table.append(
                (
                    "mnist",
                    f"S={S} (a) naive S passes ({m['naive_pool']:,} items)",
                    f"{r['naive_items_per_s']:,.0f} items/s",
                )
            )
            table.append(("mnist", f"S={S} (b) backbone + consistent head", f"{r['fast_items_per_s']:,.0f} items/s"))
            if r["limit_items_per_s"]:
                table.append(
                    (
                        "mnist",
                        f"S={S} (b) vs limit {r['limit_items_per_s']:,.0f} items/s",
                        f"{r['fraction_of_limit']:.0%}",
                    )
                )
            table.append(("mnist", f"S={S} speed-up (b)/(a)", f"{r['speedup']:.1f}×"))
    if "batchbald" in results:
        b = results["batchbald"]
        for k, r in b["by_k"].items():
            table.append(("batchbald", f"k={k}, N={b['pool']:,}: BatchBALD", f"{r['batchbald_s']:.2f} s"))
            table.append(
                (
                    "batchbald",
                    f"k={k}: top-k BALD",
                    f"{r['topk_bald_s'] * 1e3:.1f} ms (BatchBALD: {r['ratio']:,.0f}× as long)",
                )
            )
            table.append(("batchbald", f"k={k}: items shared with top-k BALD", f"{r['overlap_with_topk']}/{k}"))
    return table


def print_table(table: list[tuple[str, str, str]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        width = max(len(r[1]) for r in table) if table else 0
        for stage, what, value in table:
            print(f"{stage:<10} {what:<{width}}  {value}")
        return
    rich_table = Table(title=title)
    for column in ("stage", "measure", "value"):
        rich_table.add_column(column, justify="right" if column == "value" else "left")
    for row in table:
        rich_table.add_row(*row)
    Console(width=max(120, Console().width)).print(rich_table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    results: dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    started = time.perf_counter()
    gflops = None
    if "matmul" in stages:
        results["matmul"] = bench_matmul(device)
        gflops = results["matmul"]["gflops"]
    if "stream" in stages:
        results["stream"] = bench_stream(args, device)
    if stages & {"mnist", "batchbald"}:
        x_np, y_np = load_mnist(args)
        x = torch.from_numpy(x_np[: max(args.pool, args.bb_pool, 1000)]).float().div_(255).unsqueeze(1)
        y = torch.from_numpy(y_np[: len(x)]).long()
        net, train_s = timed(lambda: trained_cnn(x, y, args, device), device)
        results["cnn_train_s"] = train_s
        if "mnist" in stages:
            results["mnist"] = bench_mnist(args, device, gflops, net, x)
        if "batchbald" in stages:
            results["batchbald"] = bench_batchbald(args, device, net, x)
    results["total_s"] = time.perf_counter() - started
    print_table(rows(results), f"scoring benchmark on {results['machine']['device']} ({device.type})")
    print(f"total {results['total_s']:.0f} s; results in {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
