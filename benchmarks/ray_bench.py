"""What Ray Serve costs on one machine: the same closed-loop rerank load on the plain
``crossrank serve`` process and on two Ray Serve layouts of the same app, interleaved.

    python benchmarks/ray_bench.py [--concurrency 4] [--requests 8] [--rounds 3] [--reranker ART]
                                   [--out benchmarks/results]

Workload: TREC RAG 2024 requests, 1 query x 20 MS MARCO passages each, ``POST /v1/rerank``, sent by
C clients in a closed loop (each sends its next request when its answer arrives); every mode gets
the same ``--requests`` requests per round. Modes, in a rotating order each round so that a drifting
neighbour load hits each alike:

- plain: one ``crossrank serve`` process (shared scheduler, 2 intra-op threads) on 127.0.0.1;
- ray 1x2: the Ray Serve application (``crossrank.front.ray.serve``), 1 replica x 2 threads;
- ray 2x1: the same application, 2 replicas x 1 thread;
- in process: ``Reranker.score`` on the round's pairs in one call, with 2 threads and with 1 (the
  per-core rate the capacity model starts from).

Both Ray applications run on one local Ray cluster (``num_cpus=4`` logical CPUs: each layout
reserves 2, and only one layout is loaded at a time) behind one Serve HTTP proxy, under route
prefixes /one and /two. On 2 cores Ray cannot add cores: the table shows its overhead (the proxy
hop, the extra processes), not a speed-up. Writes ray.md and ray.json under --out. Model: the
starter reranker exported to int8 with the default recipe (``artifacts/starter-reranker-int8``),
unless ``--reranker``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import LOCAL, Server, closed_loop, free_port  # noqa: E402 (the same server and load generator)

import crossrank  # noqa: E402
from crossrank.evaluation.datasets import load_trec_rag  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "models" / "starter-reranker"
PAIRS_PER_QUERY = 100            # the capacity model's request: 1 query x 100 candidates
UTILISATION = 0.5                # target utilisation of each replica in the capacity model
QUERY_RATES = (1, 10, 100)       # queries/s in the capacity table


def run(args) -> dict:
    import ray
    from ray import serve

    from crossrank.export import ensure_artifact
    from crossrank.front.measure import machine_name
    from crossrank.front.ray.serve import build_application
    from crossrank.front.ray.config import RayConfig
    from crossrank.front.serve.config import ServeConfig

    os.environ.update(LOCAL)
    artifact = Path(args.reranker) if args.reranker else \
        ensure_artifact(STARTER, ROOT / "artifacts" / "starter-reranker-int8", "cross", "int8")[0].path
    manifest = json.loads((artifact / "manifest.json").read_text())
    rows = load_trec_rag()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    plain = Server(artifact, True, out / "ray-plain.log", threads=2)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        common = {"reranker": str(artifact), "max_queue_tokens": 1 << 22}
        serve.run(build_application(ServeConfig(**common, threads=2), RayConfig(replicas=1)), name="one",
                  route_prefix="/one")
        serve.run(build_application(ServeConfig(**common, threads=1), RayConfig(replicas=2)), name="two",
                  route_prefix="/two")
        urls = {"plain": plain.url, "ray 1x2": base + "/one", "ray 2x1": base + "/two"}
        in_process = {2: crossrank.Reranker(artifact, threads=2), 1: crossrank.Reranker(artifact, threads=1)}
        warm = [{"query": rows[0]["query"], "documents": rows[0]["documents"]}]
        for url in urls.values():
            asyncio.run(closed_loop(url, warm, 1))
        for reranker in in_process.values():
            reranker.score([(rows[0]["query"], d) for d in rows[0]["documents"]])

        modes = [*urls, "score 2 threads", "score 1 thread"]
        acc = {m: {"seconds": 0.0, "pairs": 0, "requests": 0, "latencies": []} for m in modes}
        for r in range(args.rounds):
            chosen = [{"query": row["query"], "documents": row["documents"]}
                      for row in rows[1 + r * args.requests: 1 + (r + 1) * args.requests]]
            pairs = [(b["query"], d) for b in chosen for d in b["documents"]]
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                if mode in urls:
                    seconds, latencies = asyncio.run(closed_loop(urls[mode], chosen, args.concurrency))
                    acc[mode]["latencies"] += latencies
                    acc[mode]["requests"] += len(chosen)
                else:
                    reranker = in_process[2 if "2" in mode else 1]
                    t = time.perf_counter()
                    reranker.score(pairs)
                    seconds = time.perf_counter() - t
                acc[mode]["seconds"] += seconds
                acc[mode]["pairs"] += len(pairs)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{m} {acc[m]['pairs'] / acc[m]['seconds']:.1f}" for m in modes) + " pairs/s", file=sys.stderr,
                flush=True)
    finally:
        plain.stop()
        serve.shutdown()
        ray.shutdown()

    results = {}
    for mode, a in acc.items():
        entry = {"pairs": a["pairs"], "seconds": round(a["seconds"], 3), "pairs_per_s": a["pairs"] / a["seconds"]}
        if a["latencies"]:
            ms = np.asarray(a["latencies"]) * 1e3
            entry.update(requests=a["requests"], p50_ms=float(np.percentile(ms, 50)),
                         p95_ms=float(np.percentile(ms, 95)))
        results[mode] = entry
    return {"machine": machine_name(), "python": platform.python_version(), "ray": ray.__version__,
            "onnxruntime": __import__("onnxruntime").__version__, "artifact": str(artifact),
            "precision": manifest["precision"], "int8_recipe": (manifest.get("quantization") or {}).get("name"),
            "concurrency": args.concurrency, "requests_per_round": args.requests, "rounds": args.rounds,
            "modes": results, "load_average_at_end": os.getloadavg(),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def capacity(per_core: float, intra_op_efficiency: float) -> list[dict]:
    """Cores for Q queries/s of 1 x 100 candidates: the formula of the report, per query rate."""
    rows = []
    for q in QUERY_RATES:
        cores = math.ceil(q * PAIRS_PER_QUERY / (per_core * UTILISATION))
        rows.append({"queries_per_s": q, "pairs_per_s": q * PAIRS_PER_QUERY, "cores": cores})
    return rows


def write_report(report: dict, out: Path, command: str) -> None:
    m = report["modes"]
    plain = m["plain"]["pairs_per_s"]
    per_core = m["score 1 thread"]["pairs_per_s"]
    efficiency = m["score 2 threads"]["pairs_per_s"] / (2 * per_core)
    service_1 = PAIRS_PER_QUERY / per_core
    lines = [
        "# crossrank on Ray Serve, one machine: the overhead", "",
        f"Command: `{command}` ({report['wall_seconds']:.0f} s wall)  ",
        f"Machine: {report['machine']}; Python {report['python']}, Ray {report['ray']}, onnxruntime "
        f"{report['onnxruntime']}; load average at the end {tuple(round(x, 1) for x in report['load_average_at_end'])}  ",
        f"Model: `{report['artifact']}` ({report['precision']}, recipe {report['int8_recipe']})  ",
        f"Workload: TREC RAG 2024, 1 query x 20 passages per request, POST /v1/rerank, {report['concurrency']} "
        f"clients in a closed loop, {report['requests_per_round']} requests per mode per round, {report['rounds']} "
        "rounds, modes in a rotating order.", "",
        "| mode | pairs | pairs/s | x plain | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {"plain": "plain `crossrank serve` process, 2 threads", "ray 1x2": "Ray Serve, 1 replica x 2 threads",
              "ray 2x1": "Ray Serve, 2 replicas x 1 thread", "score 2 threads": "in process `Reranker.score`, 2 threads",
              "score 1 thread": "in process `Reranker.score`, 1 thread (per core)"}
    for mode, label in labels.items():
        e = m[mode]
        latency = f"{e['p50_ms']:.0f} | {e['p95_ms']:.0f}" if "p50_ms" in e else "- | -"
        lines.append(f"| {label} | {e['pairs']} | {e['pairs_per_s']:.1f} | {e['pairs_per_s'] / plain:.2f} | {latency} |")
    lines += [
        "", "On 2 cores Ray adds no cores: the Ray rows show its overhead (Serve's proxy hop, one more process per "
        "replica, Ray's own daemons on the same cores). Figures measured while the machine was shared move with "
        "the neighbours' load; compare the ratios of one run.", "",
        "## Capacity model", "",
        f"From this run's per-core rate r = {per_core:.1f} pairs/s (in-process `score`, 1 thread, TREC RAG passages, "
        f"mean 251 tokens per pair) and the 2-thread efficiency e = {efficiency:.2f} (2-thread pairs/s / (2 r)):", "",
        f"- cores for Q queries/s of 1 x {PAIRS_PER_QUERY} candidates: **cores = ceil(Q x {PAIRS_PER_QUERY} / "
        f"(r x u))**, u = target utilisation ({UTILISATION}: replicas half busy keep queueing short);",
        f"- service time of one request on a replica of k threads: **S = {PAIRS_PER_QUERY} / (k x r x e_k)** "
        f"(here S = {service_1:.1f} s on 1 core, {PAIRS_PER_QUERY / (2 * per_core * efficiency):.1f} s on 2); a p95 "
        "target T needs S well under T (S <= T / 3 at u = 0.5 is a safe rule), so k = the threads per replica "
        "that bring S there, and replicas = cores / k;",
        "- GPUs: the same formula with a measured per-GPU rate in place of r (not measured here: no GPU was lent).",
        "", "| queries/s | pairs/s | cores (u = 0.5) |", "|---:|---:|---:|",
    ]
    for row in capacity(per_core, efficiency):
        lines.append(f"| {row['queries_per_s']} | {row['pairs_per_s']} | {row['cores']} |")
    lines += ["", "Figures from a loaded 2-core machine understate r; rerun on a quiet machine before sizing."]
    (out / "ray.md").write_text("\n".join(lines) + "\n")
    (out / "ray.json").write_text(json.dumps({**report, "capacity": capacity(per_core, efficiency)}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the closed loop (default 4)")
    parser.add_argument("--requests", type=int, default=8, help="1 x 20 requests per mode per round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--reranker", default=None, help="cross-encoder artifact (default: the starter, int8)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args()
    if args.requests * args.rounds + 1 > 301:
        parser.error("--requests x --rounds must be at most 300 (the TREC RAG queries)")
    report = run(args)
    write_report(report, Path(args.out), "python benchmarks/ray_bench.py " + " ".join(sys.argv[1:]))
    print(json.dumps(report["modes"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
