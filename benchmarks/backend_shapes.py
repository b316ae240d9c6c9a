"""Cold start and first-batch latency per input shape, per backend (ONNX Runtime, OpenVINO).

    python benchmarks/backend_shapes.py [--artifacts artifacts] [--threads N] [--repeats 3]

Batches change shape every call (rows x padded length), so a backend that specialises its kernels
per shape pays on the first batch of each new shape. For each backend on the starter reranker's
fp32 artifact (and ONNX Runtime on the int8 one): the session's build time in this process, the
cold start of a fresh process to its first rerank result, and, for a sequence of new shapes, the
first call's latency against the median of the next ``--repeats`` calls of that shape (same
random token ids). Sessions come from crossrank.session.build_session, as the runtime builds them.
Writes benchmarks/results/backend_shapes.md and .json; the CPU and load are at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from crossrank.front.measure import cold_start_seconds, machine_name
from crossrank.isa import describe_cpu
from crossrank.session import build_session
from crossrank.settings import physical_cores

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "models" / "starter-reranker"
# (rows, padded length): a 1 x 20 request's batches, bulk batches at several budgets, a full window.
SHAPES = [(1, 64), (20, 128), (20, 256), (8, 512), (32, 128), (16, 256), (2, 512), (20, 128)]


def _feeds(session, rows: int, length: int, rng) -> dict:
    ids = rng.integers(1000, 20000, size=(rows, length), dtype=np.int64)
    ids[:, 0] = 101
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in feeds.items() if k in names}


def measure(systems: list[tuple[str, str, Path]], threads: int, repeats: int) -> list[dict]:
    """Build every system's session, then shape by shape: each system's first call of that shape,
    then ``repeats`` rounds in which the systems take turns (so load bursts hit them alike)."""
    rows, sessions = [], []
    for backend, precision, path in systems:
        start = time.perf_counter()
        sessions.append(build_session(path / "model.onnx", threads=threads, backend=backend, precision=precision))
        rows.append({"backend": backend, "precision": precision, "build_s": time.perf_counter() - start,
                     "shapes": []})
    rng = np.random.default_rng(0)
    for rows_n, length in SHAPES:
        feeds = [_feeds(session, rows_n, length, rng) for session in sessions]
        first = []
        for session, feed in zip(sessions, feeds):
            start = time.perf_counter()
            session.run(None, feed)
            first.append(time.perf_counter() - start)
        later = [[] for _ in sessions]
        for _ in range(repeats):
            for i, (session, feed) in enumerate(zip(sessions, feeds)):
                start = time.perf_counter()
                session.run(None, feed)
                later[i].append(time.perf_counter() - start)
        for row, f, l in zip(rows, first, later):
            row["shapes"].append({"rows": rows_n, "length": length, "first_ms": f * 1e3,
                                  "steady_ms": statistics.median(l) * 1e3})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="artifact cache (exports on first use)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    parser.add_argument("--repeats", type=int, default=3, help="later calls per shape (default 3)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    from crossrank.export import ensure_artifact

    threads = args.threads or physical_cores()
    paths = {p: ensure_artifact(STARTER, Path(args.artifacts) / f"{STARTER.name}-{p}", "cross", p)[0].path
             for p in ("fp32", "int8")}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    systems = [("onnxruntime", "fp32", paths["fp32"]), ("onnxruntime", "int8", paths["int8"]),
               ("openvino", "fp32", paths["fp32"])]
    rows = measure(systems, threads, args.repeats)
    for row, (backend, _, path) in zip(rows, systems):
        row["cold_start_s"] = cold_start_seconds(str(path), backend=backend)
    report = {"cpu": describe_cpu(), "machine": machine_name(), "threads": threads, "load_start": load,
              "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()), "repeats": args.repeats, "systems": rows,
              "command": "python benchmarks/backend_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backend_shapes.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Cold start and first batch per shape, per backend", "",
             f"CPU: {report['cpu']}. Machine: {report['machine']}; {threads} threads; load average "
             f"{report['load_start']} at the start, {report['load_end']} at the end. Command: `{report['command']}`.",
             "", "Starter reranker (max_length 512). Build: the session's load/compile in this process. Cold start: "
                 "a fresh process to its first rerank result. Per shape (rows x padded length, in this order): the "
                 f"first call of that shape and the median of the next {args.repeats}, the backends taking turns. "
                 "Compare within a column; the load average says how shared the machine was.", "",
             "| backend | precision | build s | cold start s | " + " | ".join(
                 f"{r}x{n} first / steady ms" for r, n in SHAPES) + " |",
             "|---|---|---:|---:|" + "---:|" * len(SHAPES)]
    for row in rows:
        cells = " | ".join(f"{s['first_ms']:.0f} / {s['steady_ms']:.0f}" for s in row["shapes"])
        lines.append(f"| {row['backend']} | {row['precision']} | {row['build_s']:.2f} | {row['cold_start_s']:.2f} | "
                     f"{cells} |")
    (out / "backend_shapes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
