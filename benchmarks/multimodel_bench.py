"""Several models in one ``crossrank serve``: how should they share the cores? -> benchmarks/results/multimodel.md/json

    python benchmarks/multimodel_bench.py [--requests 48] [--rounds 2] [--concurrency 6] [--documents 20]

Two servers on 127.0.0.1, the same models (the reranker ladder of ``make demo``: the 2-, 4- and
6-layer starters, int8, and the cascade ``fast=L4@20>starter@5``), the same flags, but for
``--core-sharing``:

- ``per-model``: one scheduler each, each model's batches run whenever they come (each session
  with its default intra-op threads); the operating system shares the cores between them;
- ``shared``: one budget of model calls for every model (``crossrank.CoreBudget``, one call at a
  time with sessions using every core): calls take turns, first come first served.

Load: ``--concurrency`` clients in a closed loop, each request a TREC RAG query with its first
``--documents`` passages sent to ``POST /v1/rerank`` with ``model`` cycling over the four models
(a mixed load). Rounds interleave the two servers (A then B, then B then A) so a noisy neighbour
hits both alike; latencies are pooled over rounds. Reported: p50/p95/p99 overall and per model,
requests/s, and each model's resident memory (``/info``). The lower overall p95 decides
``crossrank serve``'s default (``crossrank.front.serve.config.DEFAULT_CORE_SHARING``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import ROOT, Server, closed_loop  # noqa: E402
from starter_report import write_report  # noqa: E402

from crossrank.evaluation.datasets import load_trec_rag  # noqa: E402
from crossrank.front.measure import machine_name  # noqa: E402
from crossrank.front.serve.config import DEFAULT_CORE_SHARING  # noqa: E402

MODES = ("per-model", "shared")
MODELS = ("L2", "L4", "starter", "fast")
CASCADE = "fast=L4@20>starter@5"


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def markdown(report: dict) -> str:
    modes = report["modes"]
    lines = [f"Mixed load: {report['concurrency']} closed-loop clients, {report['requests']} requests per server per "
             f"round x {report['rounds']} rounds (interleaved), each a TREC RAG query with {report['documents']} "
             f"passages on `/v1/rerank`, `model` cycling over {', '.join(MODELS)} (`{CASCADE}`). Same models and "
             f"flags in both servers but `--core-sharing`.", "",
             "| core sharing | requests/s | p50 ms | p95 ms | p99 ms | " + " | ".join(f"{m} p95 ms" for m in MODELS) + " |",
             "|---" * (5 + len(MODELS)) + "|"]
    for mode in MODES:
        row = modes[mode]
        lines.append(f"| {mode} | {row['requests_per_s']:.2f} | {row['all']['p50_ms']:.0f} | {row['all']['p95_ms']:.0f} | "
                     f"{row['all']['p99_ms']:.0f} | " + " | ".join(f"{row['models'][m]['p95_ms']:.0f}" for m in MODELS)
                     + " |")
    winner = report["lower_p95"]
    other = next(m for m in MODES if m != winner)
    lines += ["", f"**Lower p95: `{winner}`** ({modes[winner]['all']['p95_ms']:.0f} ms vs "
              f"{modes[other]['all']['p95_ms']:.0f} ms, {modes[other]['all']['p95_ms'] / modes[winner]['all']['p95_ms']:.2f}x); "
              f"`crossrank serve`'s default (`--core-sharing`): `{DEFAULT_CORE_SHARING}`"
              + ("." if winner == DEFAULT_CORE_SHARING else " (this run measured the other one lower).") , "",
              "Resident memory each model's loading added (from `/info`, the `shared` server): "
              + ", ".join(f"{name} {mb:.0f} MB" for name, mb in report["memory_mb"].items()) + ".", "",
              f"Machine: {report['machine']}; load average before {report['load_before']}, after "
              f"{report['load_after']} (the machine is shared with other work: compare within this run only). "
              f"Reproduce: `{report['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per server per round (default 48)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--concurrency", type=int, default=6, help="closed-loop clients (default 6)")
    parser.add_argument("--documents", type=int, default=20, help="passages per request (default 20)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from crossrank.front.demo import prepare

    demo = prepare(ROOT / "artifacts", models=ROOT / "models")
    small, middle, large = demo.rerankers
    models = ["--reranker", f"L2={small}", "--reranker", f"L4={middle}", "--reranker", f"starter={large}",
              "--cascade", CASCADE]
    rows = load_trec_rag()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="multimodel-"))
    servers = {mode: Server(None, True, logs / f"{mode}.log", models=models, extra=["--core-sharing", mode])
               for mode in MODES}
    samples = {mode: [] for mode in MODES}
    seconds = {mode: 0.0 for mode in MODES}
    try:
        for number in range(args.rounds):
            start = number * args.requests
            requests = [{"model": MODELS[i % len(MODELS)], "query": rows[i % len(rows)]["query"],
                         "documents": rows[i % len(rows)]["documents"][: args.documents]}
                        for i in range(start, start + args.requests)]
            for mode in (MODES if number % 2 == 0 else MODES[::-1]):
                answered = []
                took, _ = asyncio.run(closed_loop(servers[mode].url, requests, args.concurrency, answered))
                got = [(body["model"], latency) for body, latency in answered]
                seconds[mode] += took
                samples[mode] += got
                print(f"round {number + 1} {mode}: {len(got) / took:.2f} requests/s", file=sys.stderr, flush=True)
        import httpx

        info = httpx.get(servers["shared"].url + "/info", timeout=30).json()
    finally:
        for server in servers.values():
            server.stop()
    modes = {mode: {"requests_per_s": len(samples[mode]) / seconds[mode], "all": percentiles([s for _, s in samples[mode]]),
                    "models": {m: percentiles([s for name, s in samples[mode] if name == m]) for m in MODELS}}
             for mode in MODES}
    command = "python benchmarks/multimodel_bench.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    report = {"requests": args.requests, "rounds": args.rounds, "concurrency": args.concurrency,
              "documents": args.documents, "modes": modes,
              "lower_p95": min(MODES, key=lambda m: modes[m]["all"]["p95_ms"]),
              "memory_mb": {name: m["memory_mb"] for name, m in info["models"].items() if m["memory_mb"] is not None},
              "machine": machine_name(), "load_before": load_before,
              "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()), "command": command,
              "latency_ms": {mode: [(m, round(s * 1e3, 1)) for m, s in samples[mode]] for mode in MODES}}
    write_report(out, "multimodel", "Several models in one server: sharing the cores", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
