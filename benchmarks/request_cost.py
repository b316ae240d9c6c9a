"""What one hostile-sized request costs ``crossrank serve`` (issue 24): CPU and peak memory.

    python benchmarks/request_cost.py [--reranker ART] [--document-mb 5] [--documents 800] \
                                      [--document-kb 9] [--out benchmarks/results]

Two requests, each on a server of its own (``python -m crossrank serve`` on 127.0.0.1, a free
port), after one small warm-up request:

(a) ``POST /v1/rerank`` with one document of ``--document-mb`` MB of real text (Semanlink
    documents joined) and 3 short ones;
(b) ``POST /v1/rerank`` with ``--documents`` documents of ``--document-kb`` kB each (TREC RAG
    passages joined).

For each: the server process's CPU seconds (user + system, /proc/PID/stat) spent on the request,
the wall time, and its peak resident memory (VmHWM, /proc/PID/status) above the peak it had after
the warm-up. In process, for scale: the tokenizer on the whole big document (what the server did
before issue 24) against ``Reranker.rerank`` of it (what it does now), as a ratio in one process.
Writes request_cost.md and request_cost.json under --out. Model: ``make demo``'s
``artifacts/starter-reranker-int8`` unless --reranker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def big_texts(document_mb: float, documents: int, document_kb: float) -> tuple[str, list[str]]:
    from crossrank.evaluation.datasets import load_semanlink, load_trec_rag

    semanlink = " ".join(d.text for d in load_semanlink()[0])
    big = (semanlink * (1 + int(document_mb * 1e6) // len(semanlink)))[: int(document_mb * 1e6)]
    passages = " ".join(p for row in load_trec_rag()[:60] for p in row["documents"])
    size = int(document_kb * 1000)
    many = [(passages * 2)[(i * 997) % len(passages):][:size] for i in range(documents)]
    return big, many


def measure(artifact: Path, body: dict, log: Path) -> dict:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | LOCAL
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "crossrank", "serve", "--reranker", str(artifact),
                                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                    "--max-request-bytes", str(64 << 20), "--max-queue-tokens", str(1 << 22)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy: {log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        warm = httpx.post(url + "/v1/rerank", json={"query": "warm up", "documents": ["a short one"] * 4}, timeout=60)
        warm.raise_for_status()
        peak_before, cpu_before = memory_mb(process.pid, "VmHWM"), cpu_seconds(process.pid)
        started = time.perf_counter()
        response = httpx.post(url + "/v1/rerank", content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"}, timeout=600)
        wall = time.perf_counter() - started
        return {"status": response.status_code, "cpu_s": round(cpu_seconds(process.pid) - cpu_before, 2),
                "wall_s": round(wall, 2), "peak_rss_mb_after_warmup": round(peak_before, 1),
                "peak_rss_growth_mb": round(memory_mb(process.pid, "VmHWM") - peak_before, 1),
                "input_tokens": (response.json().get("meta", {}).get("tokens", {}).get("input_tokens")
                                 if response.status_code == 200 else None)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def in_process(artifact: Path, big: str) -> dict:
    import crossrank
    from crossrank.tokenize import load_tokenizer

    reranker = crossrank.Reranker(artifact)
    reranker.rerank("warm up", ["a short one"])
    tokenizer = load_tokenizer(artifact / "tokenizer.json")
    tokenizer.no_truncation()
    started = time.process_time()
    tokenizer.encode_batch([big], add_special_tokens=False)      # the whole document, as before issue 24
    whole = time.process_time() - started
    started = time.process_time()
    reranker.rerank("knowledge graph embeddings", [big])          # cut to its character budget first
    cut = time.process_time() - started
    return {"tokenize_whole_cpu_s": round(whole, 3), "rerank_cut_cpu_s": round(cut, 4),
            "ratio": round(whole / max(cut, 1e-6), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reranker", type=Path, default=ROOT / "artifacts" / "starter-reranker-int8")
    parser.add_argument("--document-mb", type=float, default=5.0)
    parser.add_argument("--documents", type=int, default=800)
    parser.add_argument("--document-kb", type=float, default=9.0)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    big, many = big_texts(args.document_mb, args.documents, args.document_kb)
    query = "knowledge graph embeddings"
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "big_document": measure(args.reranker, {"query": query, "documents": [big, "one", "two", "three"]},
                                args.out / "request_cost-big.log"),
        "many_documents": measure(args.reranker, {"query": query, "documents": many},
                                  args.out / "request_cost-many.log"),
    }
    if not args.skip_in_process:
        results["in_process"] = in_process(args.reranker, big)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "request_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    b, m = results["big_document"], results["many_documents"]
    lines = [f"# Cost of one large request (benchmarks/request_cost.py, {args.reranker.name})", "",
             f"load average {results['machine']['load_average']} -> {results['load_average_after']}, "
             f"{results['machine']['cores']} cores", "",
             "| request | status | server CPU s | wall s | peak RSS growth MB | input tokens |",
             "|---|---|---|---|---|---|",
             f"| 1 x {args.document_mb:g} MB + 3 short | {b['status']} | {b['cpu_s']} | {b['wall_s']} | "
             f"{b['peak_rss_growth_mb']} | {b['input_tokens']} |",
             f"| {args.documents} x {args.document_kb:g} kB | {m['status']} | {m['cpu_s']} | {m['wall_s']} | "
             f"{m['peak_rss_growth_mb']} | {m['input_tokens']} |"]
    if "in_process" in results:
        p = results["in_process"]
        lines += ["", f"In process: tokenizing the whole {args.document_mb:g} MB document {p['tokenize_whole_cpu_s']} "
                      f"CPU s; Reranker.rerank of it {p['rerank_cut_cpu_s']} CPU s ({p['ratio']}x)."]
    (args.out / "request_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
