"""Load: pool scoring and queueing on a large synthetic pool while labellers answer through the HTTP API.

    python benchmarks/load.py --items 1000000 --labellers 10

A float16 feature store of ``--items`` pool items (a 4-class Gaussian mixture, ``--dim`` features) becomes a live
campaign; ``beliefloop round`` trains on the seed labels, scores the whole pool and queues ``--k`` items. Then the
next ``beliefloop round`` runs while ``--labellers`` threads answer the first round's queue through ``beliefloop
annotate``'s API (``POST /api/labels``), each its own share, one answer every ``--pace`` seconds so that answers
arrive throughout the round (the round trains on those that came before it read the labels). Checks that no answer
is lost (every answer the API accepted is in the label store, once) and reports the answers' latency (p50 / p95 /
max) and each round's wall time.
Writes ``benchmarks/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, environment, run_threads

from data import Dataset, write_feature_store
from data.store import LabelStore

CLASSES = ("a", "b", "c", "d")


def synthetic_store(workspace: Path, n_items: int, dim: int, n_seed: int, n_test: int, seed: int) -> str:
    """Write the campaign's feature store (float16 memmap) straight into the workspace; return the dataset name."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, size=(len(CLASSES), dim))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, len(CLASSES), size=n)
        x = np.empty((n, dim), dtype=np.float32)  # stored as float16
        for start in range(0, n, 100_000):  # in blocks: float64 noise for 1M x dim would be large
            stop = min(start + 100_000, n)
            x[start:stop] = centres[y[start:stop]] + rng.normal(0, 1.5, size=(stop - start, dim))
        return x, y

    x_train, y_train = draw(n_items)
    y_train[n_seed:] = -1  # the pool: unknown labels
    x_test, y_test = draw(n_test)
    dataset = Dataset(
        "loadpool",
        "synthetic Gaussian mixture",
        x_train,
        y_train.astype(np.int64),
        x_test,
        y_test.astype(np.int64),
        np.array([f"i{i:07d}" for i in range(n_items)]),
        np.array([f"t{i:05d}" for i in range(n_test)]),
        CLASSES,
    )
    write_feature_store(dataset, workspace / "datasets" / "loadpool", dtype="float16")
    return str(workspace / "loadpool.npz")  # the campaign's dataset name; its store is datasets/loadpool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _round(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flows", "round", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"beliefloop round failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--labellers", type=int, default=10)
    parser.add_argument("--k", type=int, default=500, help="items queued per round (the labellers' work)")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples S per item when scoring")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument(
        "--pace", type=float, default=2.0, help="seconds between one labeller's answers (spreads them over the round)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="beliefloop-load-") as tmp:
        workspace = Path(tmp) / "w"
        started = time.perf_counter()
        dataset = synthetic_store(workspace, args.items, args.dim, n_seed=100, n_test=2000, seed=0)
        build_seconds = time.perf_counter() - started
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BELIEFLOOP_MODEL__STEPS": str(args.steps),
            "BELIEFLOOP_SELECTION__CANDIDATES": "[]",
            "BELIEFLOOP_ACQUISITION__SAMPLES": str(args.samples),
            "BELIEFLOOP_ACQUISITION__SHARDS": "2",
            "BELIEFLOOP_REPRESENTATION__NAME": "none",
        }
        common = ["--dataset", dataset, "--workspace", str(workspace), "--k", str(args.k), "--campaign", "load"]
        round_1 = _round(common, env)
        print(f"feature store {build_seconds:.1f} s; round 1 (set-up, training, scoring the pool) {round_1:.1f} s")

        store = LabelStore.for_workspace(workspace)
        pending = [q.item_id for q in store.queued("load", status="pending")]
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "flows", "annotate", "--workspace", str(workspace), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/api/queue", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("beliefloop annotate did not start") from None
                time.sleep(0.3)

        latencies: list[float] = []
        sent_at: list[float] = []
        accepted: list[tuple[str, int, str]] = []
        errors: list[str] = []
        lock = threading.Lock()

        def labeller(index: int) -> None:
            name = f"labeller-{index}"
            with httpx.Client(base_url=url, timeout=60) as client:
                for item in pending[index :: args.labellers]:
                    label = int(item[-1]) % len(CLASSES)
                    t = time.perf_counter()
                    response = client.post("/api/labels", json={"item_id": item, "label": label, "annotator": name})
                    elapsed = time.perf_counter() - t
                    with lock:
                        latencies.append(elapsed)
                        sent_at.append(t)
                        if response.status_code == 200:
                            accepted.append((item, label, name))
                        else:
                            errors.append(f"{item}: {response.status_code} {response.text[:200]}")
                    time.sleep(args.pace)

        round_2: dict[str, float] = {}

        def second_round() -> None:
            round_2["start"] = time.perf_counter()
            round_2["seconds"] = _round(common, env)
            round_2["end"] = time.perf_counter()

        runner = threading.Thread(target=second_round)
        runner.start()
        answer_seconds = run_threads(labeller, args.labellers)
        runner.join()
        server.terminate()
        server.wait(timeout=30)

        stored = {
            (item, label, who) for who in {a[2] for a in accepted} for item, label in store.answers_by("load", who)
        }
        lost = [a for a in accepted if a not in stored]
        with store.engine.connect() as conn:
            n_rows = conn.exec_driver_sql("SELECT count(*) FROM labels WHERE annotator LIKE 'labeller-%'").scalar()
        rounds = store.round_metrics("load")
        store.close()

    latencies_ms = np.asarray(latencies) * 1000
    result = {
        "items": args.items,
        "dim": args.dim,
        "dtype": "float16",
        "labellers": args.labellers,
        "k": args.k,
        "samples": args.samples,
        "answers_sent": len(latencies),
        "answers_accepted": len(accepted),
        "answers_refused": errors[:20],
        "answers_lost": len(lost),
        "label_rows_stored": int(n_rows),
        "latency_ms": {
            "p50": float(np.percentile(latencies_ms, 50)),
            "p95": float(np.percentile(latencies_ms, 95)),
            "max": float(latencies_ms.max()),
        },
        "answer_seconds": answer_seconds,
        "pace_seconds": args.pace,
        "answers_during_round_2": sum(round_2["start"] <= t <= round_2["end"] for t in sent_at),
        "feature_store_seconds": build_seconds,
        "round_1_seconds": round_1,
        "round_2_seconds": round_2.get("seconds"),
        "rounds": [
            {
                k: r.get(k)
                for k in (
                    "round",
                    "n_labeled",
                    "pool_scored",
                    "n_queued",
                    "acquisition_seconds",
                    "train_seconds",
                    "round_seconds",
                )
            }
            for r in rounds
        ],
        "environment": environment("cpu"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lat = result["latency_ms"]
    print(
        f"{len(accepted)} of {len(latencies)} answers accepted, {len(lost)} lost, {n_rows} stored; latency p50 "
        f"{lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms; round 2 (concurrent) "
        f"{result['round_2_seconds']:.1f} s; wrote {args.out}"
    )
    return 1 if lost or n_rows != len(accepted) else 0


if __name__ == "__main__":
    raise SystemExit(main())
