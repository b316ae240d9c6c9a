"""Closed-loop load on ``crossrank serve`` over loopback, each served layout against the others
and against the in-process API.

    python benchmarks/serve_bench.py [--concurrency 1,4,16,64] [--min-requests 24] [--requests-per-client 2]
                                     [--rounds 2] [--reranker ART] [--out benchmarks/results] [--name serve]

Workload: TREC RAG 2024 requests, each a query with its 20 MS MARCO passages (1 x 20), sent
to ``POST /v1/rerank`` by C clients at once, each sending its next request as soon as its answer
arrives (closed loop), max(min_requests, requests_per_client x C) requests per concurrency level. Modes:

(a) the default server: ``crossrank serve`` with no layout flags (shared batches; the layout it
    chose, its origin and workers x threads, is read from /info: runtime.json's, else the rule);
(a') the same server with each other split of the physical cores into ``--workers W --threads T``
    (on 2 cores: 1 x 2, the default before issue 26, and 2 x 1);
(b) the same server with sharing off (``--shared 0``: each request runs its own batches on its own
    thread, as many at once as there are requests, each with every core's threads);
(c) the in-process API called sequentially: ``Reranker.rerank`` per request, and
    ``Reranker.score`` on all the pairs of a level's requests in one call (the throughput yardstick);
    at the ``--baseline-levels`` only (default 1 and 16, where the targets are).

Every server runs as a subprocess on 127.0.0.1 (free ports) with the same artifact; the load
generator (asyncio + httpx) and (c) run in this process. Rounds are interleaved (each mode in
turn, the order reversed every other round) so that a noisy neighbour hits every mode alike;
latencies are pooled over rounds, rates are total work over total time. Model: the shipped
starter reranker exported to int8 with the default recipe (``make demo``'s
``artifacts/starter-reranker-int8``), unless ``--reranker``.

Writes NAME.md, NAME.json and NAME_p95.png under --out (CPU model, ISA and load average beside the
figures). Targets (issue 26): at concurrency 16, (a) >= 1.3x the pairs/s of the 1 x cores layout
(the default before it) and >= 1.15x (b); at concurrency 1, (a)'s p50 within 5% of the in-process
``rerank``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import crossrank
from crossrank.evaluation.datasets import load_trec_rag

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "models" / "starter-reranker"
LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``crossrank serve`` subprocess on a free loopback port serving ``artifact`` as the model
    "reranker", or the ``models`` flags given (e.g. several --reranker NAME=ART); ``extra``: more flags."""

    def __init__(self, artifact: Path | None, shared: bool, log: Path, workers: int | None = None,
                 threads: int | None = None, models: list[str] | None = None, extra: list[str] = ()):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | LOCAL
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crossrank", "serve", *(models or ["--reranker", f"reranker={artifact}"]),
             "--host", "127.0.0.1", "--port", str(self.port), "--shared", "1" if shared else "0", "--log-level",
             "warning", "--max-queue-tokens", str(1 << 22), *extra]
            + (["--workers", str(workers)] if workers else []) + (["--threads", str(threads)] if threads else []),
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("server not healthy after 300 s")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (all its threads, user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def layout(self) -> dict | None:
        """The layout /info says the model "reranker" runs with (workers, threads, origin)."""
        import httpx

        return httpx.get(self.url + "/info", timeout=30).json()["models"]["reranker"]["layout"]

    def metrics(self) -> dict[str, float]:
        import httpx

        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


async def closed_loop(url: str, requests: list[dict], concurrency: int,
                      answered: list | None = None) -> tuple[float, list[float]]:
    """Send every request with ``concurrency`` clients in a closed loop; (seconds, latencies in s).
    ``answered`` (a list) gets (request body, latency s) of each, in the order they were answered."""
    import httpx

    queue = list(reversed(requests))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        async def worker():
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                response = await client.post("/v1/rerank", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
                latencies.append(time.perf_counter() - started)
                if answered is not None:
                    answered.append((body, latencies[-1]))

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return time.perf_counter() - started, latencies


def in_process(reranker: crossrank.Reranker, requests: list[dict]) -> dict:
    """Sequential ``rerank`` calls (seconds, CPU seconds, per-request latencies), then one ``score``
    call on all their pairs (seconds, CPU seconds). CPU time is this process's (no load is
    generated meanwhile)."""
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    for body in requests:
        t = time.perf_counter()
        reranker.rerank(body["query"], body["documents"], return_documents=False)
        latencies.append(time.perf_counter() - t)
    out = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "latencies": latencies}
    pairs = [(body["query"], doc) for body in requests for doc in body["documents"]]
    started, cpu = time.perf_counter(), time.process_time()
    reranker.score(pairs)
    out.update(score_seconds=time.perf_counter() - started, score_cpu=time.process_time() - cpu)
    return out


def summarise(seconds: float, cpu: float, latencies: list[float], requests: int, pairs: int) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"requests": requests, "seconds": round(seconds, 3), "requests_per_s": requests / seconds,
            "pairs_per_s": pairs / seconds, "cpu_seconds": round(cpu, 3), "pairs_per_cpu_s": pairs / cpu,
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def batch_figures(before: dict, after: dict) -> dict:
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta('crossrank_model_batches_total{model="reranker"}')
    rows = delta('crossrank_model_rows_total{model="reranker"}')
    real = delta('crossrank_model_real_tokens_total{model="reranker"}')
    computed = delta('crossrank_model_computed_tokens_total{model="reranker"}')
    shared_batches = delta('crossrank_batch_requests_count{model="reranker"}')
    requests_in_batches = delta('crossrank_batch_requests_sum{model="reranker"}')
    return {"batches": int(batches), "rows_per_batch": rows / batches if batches else 0.0,
            "padding": 1 - real / computed if computed else 0.0,
            "requests_per_batch": requests_in_batches / shared_batches if shared_batches else None}


def run(args) -> dict:
    from crossrank.export import ensure_artifact
    from crossrank.front.measure import machine_name
    from crossrank.front.tune import layout_grid

    artifact = Path(args.reranker) if args.reranker else \
        ensure_artifact(STARTER, ROOT / "artifacts" / "starter-reranker-int8", "cross", "int8")[0].path
    manifest = json.loads((artifact / "manifest.json").read_text())
    rows = load_trec_rag()
    load_at_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    servers = {"default": Server(artifact, True, out / f"{args.name}-default.log")}
    default = servers["default"].layout()
    labels = {"default": f"(a) default: {default['workers']} x {default['threads']} ({default['origin']})"}
    for workers, threads in layout_grid("cpu"):
        mode = f"{workers}x{threads}"
        labels[mode] = f"(a') --workers {workers} --threads {threads}"
        if (workers, threads) != (default["workers"], default["threads"]):
            servers[mode] = Server(artifact, True, out / f"{args.name}-{mode}.log", workers=workers, threads=threads)
    servers["unshared"] = Server(artifact, False, out / f"{args.name}-unshared.log")
    labels.update(unshared="(b) sharing off", rerank="(c) in-process rerank")
    reranker = crossrank.Reranker(artifact)
    reranker.rerank(rows[0]["query"], rows[0]["documents"])  # warm
    levels = []
    cursor = 0
    try:
        for concurrency in args.concurrency:
            # every round offers the full concurrency: at least one request per client
            per_round = max(-(-args.min_requests // args.rounds), args.requests_per_client * concurrency)
            count = per_round * args.rounds
            chosen = [{"query": r["query"], "documents": r["documents"]}
                      for r in (rows[(cursor + i) % len(rows)] for i in range(count))]
            cursor += count
            pairs = sum(len(b["documents"]) for b in chosen)
            baseline = concurrency in args.baseline_levels
            acc = {m: {"seconds": 0.0, "cpu": 0.0, "latencies": []} for m in (*servers, "rerank")}
            score_seconds = score_cpu = 0.0
            before = {m: s.metrics() for m, s in servers.items()}
            for r in range(args.rounds):
                part = chosen[r * per_round:(r + 1) * per_round]
                order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
                for mode, server in order:  # alternate the order so that a drifting load hits every mode alike
                    cpu = server.cpu_seconds()
                    seconds, latencies = asyncio.run(closed_loop(server.url, part, concurrency))
                    acc[mode]["cpu"] += server.cpu_seconds() - cpu
                    acc[mode]["seconds"] += seconds
                    acc[mode]["latencies"] += latencies
                if baseline:
                    measured = in_process(reranker, part)
                    acc["rerank"]["seconds"] += measured["seconds"]
                    acc["rerank"]["cpu"] += measured["cpu"]
                    acc["rerank"]["latencies"] += measured["latencies"]
                    score_seconds += measured["score_seconds"]
                    score_cpu += measured["score_cpu"]
            after = {m: s.metrics() for m, s in servers.items()}
            level = {"concurrency": concurrency, "pairs": pairs, "load_average": os.getloadavg(),
                     "modes": {m: summarise(a["seconds"], a["cpu"], a["latencies"], count, pairs)
                               for m, a in acc.items() if a["latencies"]},
                     "score_pairs_per_s": pairs / score_seconds if baseline else None,
                     "score_pairs_per_cpu_s": pairs / score_cpu if baseline else None,
                     "batches": {m: batch_figures(before[m], after[m]) for m in servers}}
            levels.append(level)
            print(f"c={concurrency:>3} " + " | ".join(
                f"{mode} {m['pairs_per_s']:.1f} pairs/s p50 {m['p50_ms']:.0f} p95 {m['p95_ms']:.0f}"
                for mode, m in level["modes"].items())
                + (f" | score {level['score_pairs_per_s']:.1f}" if baseline else "")
                + f" | load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    from crossrank.isa import describe_cpu

    return {"machine": machine_name(), "cpu": describe_cpu(), "python": platform.python_version(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "artifact": str(artifact), "precision": manifest["precision"],
            "int8_recipe": (manifest.get("quantization") or {}).get("name"),
            "threads": reranker.options.threads, "batch_tokens": reranker.options.batch_tokens,
            "rounds": args.rounds, "default_layout": default, "labels": labels,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(), "levels": levels,
            "targets": targets(levels, default)}


def targets(levels: list[dict], default: dict) -> dict:
    """Issue 26's ratios: at c=16 the default server against the 1 x cores layout (the default
    before it) and against sharing off; at c=1 its p50 against the in-process ``rerank``."""
    from crossrank.settings import physical_cores

    cores = physical_cores()
    old = "default" if (default["workers"], default["threads"]) == (1, cores) else f"1x{cores}"
    by_c = {level["concurrency"]: level["modes"] for level in levels}
    result = {}
    if 16 in by_c:
        modes = by_c[16]
        result["c16_default_vs_1_x_cores"] = modes["default"]["pairs_per_s"] / modes[old]["pairs_per_s"]
        result["c16_default_vs_unshared"] = modes["default"]["pairs_per_s"] / modes["unshared"]["pairs_per_s"]
        # per CPU-second: what each costs, whatever share of a contended machine it won
        result["c16_default_vs_1_x_cores_per_cpu"] = (modes["default"]["pairs_per_cpu_s"]
                                                      / modes[old]["pairs_per_cpu_s"])
        result["c16_default_vs_unshared_per_cpu"] = (modes["default"]["pairs_per_cpu_s"]
                                                     / modes["unshared"]["pairs_per_cpu_s"])
    if 1 in by_c and "rerank" in by_c[1]:
        result["c1_p50_default_vs_rerank"] = by_c[1]["default"]["p50_ms"] / by_c[1]["rerank"]["p50_ms"]
    return result


TARGETS = (("c16_default_vs_1_x_cores", "c=16: (a) pairs/s >= 1.3x the 1 x cores layout (the old default)", ">=", 1.3),
           ("c16_default_vs_unshared", "c=16: (a) pairs/s >= 1.15x (b) sharing off", ">=", 1.15),
           ("c1_p50_default_vs_rerank", "c=1: (a) p50 within 5% of in-process `rerank`", "<=", 1.05),
           ("c16_default_vs_1_x_cores_per_cpu", "(per CPU-second) c=16: (a) vs the 1 x cores layout", None, None),
           ("c16_default_vs_unshared_per_cpu", "(per CPU-second) c=16: (a) vs (b)", None, None))


def write_report(report: dict, out: Path, command: str, name: str) -> None:
    t, labels = report["targets"], report["labels"]
    lines = [
        "# crossrank serve layouts under closed-loop load (loopback)", "",
        f"Command: `{command}`  ",
        f"CPU: {report['cpu']}; machine: {report['machine']}; Python {report['python']}, onnxruntime "
        f"{report['onnxruntime']}; load average (1, 5, 15 min) at the start "
        f"{tuple(round(x, 1) for x in report['load_average_at_start'])}, at the end "
        f"{tuple(round(x, 1) for x in report['load_average_at_end'])}  ",
        f"Model: `{report['artifact']}` ({report['precision']}, recipe {report['int8_recipe']}), batch budget "
        f"{report['batch_tokens']} tokens  ",
        f"Workload: TREC RAG 2024, 1 query x 20 passages per request, POST /v1/rerank; {report['rounds']} "
        "interleaved rounds per level (every mode in turn).", "",
        f"Modes: **(a)** `crossrank serve` with no layout flags: it chose {report['default_layout']['workers']} "
        f"workers x {report['default_layout']['threads']} intra-op threads per worker, from "
        f"{report['default_layout']['origin']}; **(a')** the same server with `--workers W --threads T`, "
        "each other split of the physical cores; **(b)** sharing off (`--shared 0`, each request on its own "
        "thread with every core's threads); **(c)** in-process `Reranker.rerank` called sequentially (its p50 is "
        "the single-request reference); `score` = in-process `Reranker.score` on all the level's pairs in one "
        "call. Load: the 1-minute load average when the level ended.", "",
        "| concurrency | mode | requests | req/s | pairs/s | pairs/CPU-s | p50 ms | p95 ms | p99 ms | rows/batch "
        "| requests/batch | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in report["levels"]:
        for mode, m in level["modes"].items():
            b = level["batches"].get(mode)
            extra = (f"{b['rows_per_batch']:.1f} | " + (f"{b['requests_per_batch']:.2f}"
                                                        if b["requests_per_batch"] is not None else "-")) \
                if b else "- | -"
            lines.append(f"| {level['concurrency']} | {labels[mode]} | {m['requests']} | {m['requests_per_s']:.2f} | "
                         f"{m['pairs_per_s']:.1f} | {m['pairs_per_cpu_s']:.2f} | {m['p50_ms']:.0f} | {m['p95_ms']:.0f} | "
                         f"{m['p99_ms']:.0f} | {extra} | {level['load_average'][0]:.1f} |")
        if level["score_pairs_per_s"] is not None:
            lines.append(f"| {level['concurrency']} | `score` (one call) | - | - | {level['score_pairs_per_s']:.1f} "
                         f"| {level['score_pairs_per_cpu_s']:.2f} | - | - | - | - | - | - |")
    lines += ["", "## Targets (issue 26)", "", "| target | measured | met |", "|---|---:|---|"]
    for key, text, sense, bar in TARGETS:
        if key in t:
            met = "-" if bar is None else ("yes" if (t[key] >= bar if sense == ">=" else t[key] <= bar) else "no")
            lines.append(f"| {text} | {t[key]:.2f}x | {met} |")
    lines += ["", f"![p95 latency vs offered concurrency]({name}_p95.png)", "",
              "The load generator (asyncio + httpx), the servers and the in-process runs share the machine's "
              "cores; on a shared machine the figures move with the neighbours' load, so compare the ratios of "
              "one run, not absolute times across runs. pairs/CPU-s divides by the CPU time the server process "
              "(or, for (c), this process) used: it says what each mode costs whatever share of a contended "
              "machine it won, and on a quiet machine pairs/s tends to cores x pairs/CPU-s for a mode that keeps "
              "every core busy."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")


def plot(report: dict, out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    xs = [level["concurrency"] for level in levels]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = iter(("o-", "^-", "v-", "D-", "s--", "x-"))
    for mode, label in report["labels"].items():
        if mode == "rerank" or mode not in levels[0]["modes"]:
            continue
        ax.plot(xs, [level["modes"][mode]["p95_ms"] for level in levels], next(styles), label=label)
    rerank = [level["modes"]["rerank"]["p50_ms"] for level in levels if "rerank" in level["modes"]]
    if rerank:
        ax.axhline(np.median(rerank), color="#999", ls=":", label="(c) in-process rerank, p50 (one request alone)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("offered concurrency (closed-loop clients)")
    ax.set_ylabel("p95 latency per 1x20 request (ms)")
    ax.set_title(f"crossrank serve layouts, {report['precision']} starter reranker, loopback")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{name}_p95.png", dpi=120)


def int_list(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16, 64], help="levels (default 1,4,16,64)")
    parser.add_argument("--min-requests", type=int, default=24,
                        help="requests per level at least (default 24; a level sends max(this, "
                             "requests-per-client x concurrency))")
    parser.add_argument("--requests-per-client", type=int, default=2, help="(default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per level (default 2)")
    parser.add_argument("--baseline-levels", type=int_list, default=[1, 16],
                        help="levels at which (c) runs in process too (default 1,16: the targets' levels)")
    parser.add_argument("--reranker", default=None, help="cross-encoder artifact (default: the starter, int8)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    parser.add_argument("--name", default="serve", help="report files NAME.md, NAME.json, NAME_p95.png (default serve)")
    args = parser.parse_args()
    report = run(args)
    out = Path(args.out)
    write_report(report, out, "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:]), args.name)
    plot(report, out, args.name)
    print(json.dumps(report["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
