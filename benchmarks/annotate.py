"""Answers through the labeling page's HTTP API: N annotators at once against a real ``beliefloop annotate`` server.

    python benchmarks/annotate.py                      # 10 annotators x 1,000 answers, SQLite label store

A live campaign of ``annotators x answers`` unlabelled vectors is prepared as ``beliefloop round`` would (items in
the label store, the features in the workspace's feature store) and every item queued as one round, without
training. ``beliefloop annotate`` then serves it in a subprocess and one thread per annotator posts its own items'
answers to ``/api/labels``, one request after the other, as a person's browser does. Prints answers/s (all answers
over the wall time) and the latency percentiles of single answers, checks that every answer was stored once, and
writes ``benchmarks/results/annotate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, environment, run_threads

from data.store import LabelStore, QueueEntry
from flows.campaign_setup import prepare_campaign
from flows.settings import load_settings

CAMPAIGN = "bench"


def prepare(workspace: Path, n_items: int, seed: int) -> Path:
    """A live campaign of ``n_items`` unlabelled 16-feature vectors (10 classes), all queued in round 1."""
    rng = np.random.default_rng(seed)
    dataset = workspace.parent / "bench.npz"
    np.savez(
        dataset,
        x_train=rng.normal(size=(n_items, 16)).astype(np.float32),
        y_train=np.full(n_items, -1),
        x_test=rng.normal(size=(100, 16)).astype(np.float32),
        y_test=np.arange(100) % 10,
    )
    params = workspace.parent / "params.yaml"
    params.write_text(f"workspace: {workspace}\ndataset:\n  name: {dataset}\ncampaign:\n  name: {CAMPAIGN}\n")
    settings = load_settings(params)
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=False)
    pool = store.unlabeled_pool(CAMPAIGN)
    store.start_round(CAMPAIGN, 1)
    store.enqueue(CAMPAIGN, 1, [QueueEntry(item, rank, None, "random") for rank, item in enumerate(pool, start=1)])
    store.close()
    return params


def serve(params: Path) -> tuple[subprocess.Popen, int]:
    """``beliefloop annotate`` on a free loopback port, once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "flows", "annotate", "--params", str(params), "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/queue", timeout=5)
            return server, port
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                output = server.stdout.read() if server.stdout else ""
                raise RuntimeError(f"annotate did not start: {output}") from None
            time.sleep(0.2)


def run(port: int, items: list[str], annotators: int, answers: int) -> dict:
    """Each annotator thread answers its own ``answers`` items in turn; latencies of every request, in seconds."""
    latencies: list[list[float]] = [[] for _ in range(annotators)]
    failures: list[str] = []

    def annotate(k: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for i, item in enumerate(items[k * answers : (k + 1) * answers]):
                start = time.perf_counter()
                response = client.post("/api/labels", json={"item_id": item, "label": i % 10, "annotator": f"a{k}"})
                latencies[k].append(time.perf_counter() - start)
                if response.status_code != 200:
                    failures.append(f"{item}: {response.status_code} {response.text}")

    wall = run_threads(annotate, annotators)
    every = np.concatenate([np.asarray(x) for x in latencies])
    return {
        "answers": int(every.size),
        "failures": failures[:10],
        "n_failures": len(failures),
        "wall_seconds": wall,
        "answers_per_second": every.size / wall,
        "latency_ms": {f"p{q}": float(np.percentile(every, q) * 1000) for q in (50, 95, 99)}
        | {"max": float(every.max() * 1000)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=10)
    parser.add_argument("--answers", type=int, default=1000, help="answers per annotator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "annotate.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="beliefloop-annotate-") as tmp:
        workspace = Path(tmp) / "w"
        params = prepare(workspace, args.annotators * args.answers, args.seed)
        store = LabelStore(load_settings(params).store_url)
        items = [q.item_id for q in store.queued(CAMPAIGN, status="pending")]
        server, port = serve(params)
        try:
            result = run(port, items, args.annotators, args.answers)
        finally:
            server.terminate()
            server.wait(30)
        stored = sum(len(store.answers_by(CAMPAIGN, f"a{k}")) for k in range(args.annotators))
        result["stored_once"] = (
            stored == result["answers"] - result["n_failures"] == len(store.current_labels(CAMPAIGN))
        )
        store.close()
    latency = result["latency_ms"]
    print(f"{args.annotators} annotators x {args.answers} answers through POST /api/labels, SQLite label store")
    print("| answers | answers/s | p50 ms | p95 ms | p99 ms | max ms | failed | each stored once |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {result['answers']:,} | {result['answers_per_second']:.0f} | {latency['p50']:.1f} | {latency['p95']:.1f} "
        f"| {latency['p99']:.1f} | {latency['max']:.1f} | {result['n_failures']} | {result['stored_once']} |"
    )
    payload = {"annotators": args.annotators, "answers_per_annotator": args.answers, "store": "sqlite", **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**payload, "environment": environment("cpu")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
