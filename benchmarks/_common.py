"""Helpers every benchmark shares: where MNIST is, and what machine a result was measured on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST_CANDIDATES = (ROOT.parent / "shared" / "data" / "mnist.npz", ROOT / "shared" / "data" / "mnist.npz")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: str) -> dict[str, Any]:
    """What a result depends on besides the code: versions, CPU, threads and the load when the run started."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": device,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def mnist_path(explicit: Path | None = None) -> Path | None:
    """``explicit`` if it is a file, else the shared ``mnist.npz`` beside the repository; ``None`` when absent."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    return next((p for p in MNIST_CANDIDATES if p.is_file()), None)


def finish_parser(
    parser: argparse.ArgumentParser, name: str, quick: dict[str, Any], argv: list[str] | None
) -> argparse.Namespace:
    """Add the flags every benchmark has (threads, device, --quick, --out) and parse; ``--quick`` swaps in the
    ``quick`` sizes except where a flag was given explicitly."""
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (set explicitly)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min): " + json.dumps(quick))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args


def run_threads(target, n: int) -> float:
    """Start ``target(i)`` for i in 0..n-1 on ``n`` threads at once, wait for all; the wall seconds they took."""
    import threading
    import time

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start
